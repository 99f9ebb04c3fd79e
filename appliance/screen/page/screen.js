// The unit's screen. It only reads: the state stream (v1/state) and the
// video over a loopback WebRTC connection (v1/offer), both relative to the
// page (which may sit under a secret path). It decodes what
// roomd hands it and never shows a picture it cannot vouch for: a tile
// (or the self-view) whose source changed stays hidden until a new frame
// of the new source has been presented.
"use strict";

const SLOTS = 9, SELF = 8;
const $ = (id) => document.getElementById(id);
let view = null;
let pc = null;
const midSlot = {};
const videos = [];     // slot -> <video>
const tiles = [];      // far slot -> tile <div>
const fresh = [];      // slot -> frames presented since the source last changed
const owner = [];      // far slot -> participant shown
let selfOut = false;
let lastSelfFrame = 0;

function setup() {
  for (let i = 0; i < SELF; i++) {
    const t = document.createElement("div");
    t.className = "tile";
    t.id = "tile-" + i;
    t.dataset.slot = String(i);
    t.hidden = true;
    const v = document.createElement("video");
    v.muted = true; v.autoplay = true; v.playsInline = true;
    v.className = "waiting";
    t.appendChild(v);
    $("tiles").appendChild(t);
    tiles[i] = t; videos[i] = v;
  }
  videos[SELF] = document.querySelector("#self video");
  videos[SELF].className = "waiting";
  for (let i = 0; i < SLOTS; i++) {
    fresh[i] = 0;
    watchFrames(i);
  }
}

// watchFrames counts presented frames per slot: a slot is shown once a
// frame has come since its source last changed.
function watchFrames(i) {
  const v = videos[i];
  if (!v.requestVideoFrameCallback) return;
  const cb = () => {
    fresh[i]++;
    if (i === SELF) lastSelfFrame = performance.now();
    if (fresh[i] >= 1) v.classList.remove("waiting");
    v.requestVideoFrameCallback(cb);
  };
  v.requestVideoFrameCallback(cb);
}

function stale(i) {
  fresh[i] = 0;
  videos[i].classList.add("waiting");
}

function render(v) {
  view = v;
  document.documentElement.lang = v.lang;
  document.body.className = "state-" + (v.fault ? "fault" : v.state);
  const bar = $("bar");
  bar.className = v.bar_kind;
  $("bar-text").textContent = v.bar;
  $("others").textContent = v.others_text || "";
  $("e2ee").textContent = v.e2ee || "";
  $("room").textContent = v.room;
  $("press").textContent = v.press_join || "";
  $("next").textContent = v.next || "";
  $("health").textContent = v.health;
  $("notice").textContent = v.notice;
  $("self-closed").textContent = v.camera_shut;
  if (v.fault) {
    $("fault-title").textContent = v.fault.title;
    const ul = $("fault-reasons");
    ul.replaceChildren(...v.fault.reasons.map((r) => { const li = document.createElement("li"); li.textContent = r; return li; }));
    $("todo-title").textContent = v.fault.what_to_do_title;
    $("todo").textContent = v.fault.todo;
  }
  // Self-view: the placeholder at once when the camera is not out; the
  // room again only from a frame that came after it went out again.
  const out = v.camera_out && v.state === "in_call";
  if (!out) stale(SELF);
  if (out && !selfOut) stale(SELF);
  selfOut = out;
  $("self").classList.toggle("closed", !out);
  layout(v);
  tick();
}

function layout(v) {
  const far = (v.media && v.media.far) || [];
  const shown = new Set();
  for (const s of far) {
    if (s.slot < 0 || s.slot >= SELF) continue;
    shown.add(s.slot);
    if (owner[s.slot] !== s.participant) {
      owner[s.slot] = s.participant;
      stale(s.slot);
    }
    tiles[s.slot].hidden = false;
    tiles[s.slot].dataset.participant = s.participant;
    tiles[s.slot].classList.toggle("speaking", !!s.speaking);
  }
  for (let i = 0; i < SELF; i++) {
    if (!shown.has(i)) {
      tiles[i].hidden = true;
      if (owner[i] !== undefined) { owner[i] = undefined; stale(i); }
    }
  }
  arrange(Math.max(shown.size, 1));
}

// arrange lays n tiles out beside the self-view, never under it: every
// far-end participant stays wholly visible. It keeps the self-view's
// corner free by giving up either a column on the right or a strip at the
// bottom, whichever leaves the larger 16:9 picture per tile, and picks the
// grid the same way.
function arrange(n) {
  const W = window.innerWidth, H = $("call").clientHeight || window.innerHeight;
  const mx = W / 100, my = window.innerHeight / 100; // 1vw, 1vh
  // #self in screen.css: 22vw wide, 16:9, 1.5vw/1.5vh from the corner (its
  // size from the stylesheet, not the DOM: it may not be shown yet).
  const sw = 22 * mx + 2.5 * mx, sh = 22 * mx * 9 / 16 + 2.5 * my;
  let best = null;
  for (const reserve of ["right", "bottom"]) {
    const w = W - 2 * mx - (reserve === "right" ? sw : 0);
    const h = H - 2 * my - (reserve === "bottom" ? sh : 0);
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const pw = Math.min(w / cols, (h / rows) * 16 / 9);
      if (pw > 0 && (!best || pw > best.pw + 0.5)) best = { reserve, cols, rows, pw };
    }
  }
  const g = $("tiles").style;
  g.right = best.reserve === "right" ? (mx + sw) + "px" : "";
  g.bottom = best.reserve === "bottom" ? (my + sh) + "px" : "";
  g.gridTemplateColumns = "repeat(" + best.cols + ", 1fr)";
  g.gridTemplateRows = "repeat(" + best.rows + ", 1fr)";
}

function tick() {
  const t = $("timer");
  if (!view || !view.call_since || view.state !== "in_call") { t.textContent = ""; return; }
  const s = Math.max(0, Math.floor((Date.now() - view.call_since) / 1000));
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = s % 60;
  t.textContent = (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + String(sec).padStart(2, "0");
}

// A self-view whose frames stop (the encoder paused) does not keep its
// last picture: after a second without one it shows the placeholder.
function watchdog() {
  if (selfOut && fresh[SELF] > 0 && performance.now() - lastSelfFrame > 1000) stale(SELF);
}

function state() {
  const es = new EventSource("v1/state");
  es.onmessage = (e) => { try { render(JSON.parse(e.data)); } catch (err) { console.error(err); } };
  es.onerror = () => { /* EventSource reconnects by itself */ };
}

async function connect() {
  if (pc) { try { pc.close(); } catch (e) {} }
  const me = new RTCPeerConnection({ iceServers: [] });
  pc = me;
  for (let i = 0; i < SLOTS; i++) me.addTransceiver("video", { direction: "recvonly" });
  me.ontrack = (e) => {
    const slot = midSlot[e.transceiver.mid];
    if (slot === undefined) return;
    const v = videos[slot];
    v.srcObject = new MediaStream([e.track]);
    v.play().catch(() => {});
  };
  me.onconnectionstatechange = () => {
    if (pc === me && (me.connectionState === "failed" || me.connectionState === "closed")) setTimeout(connect, 2000);
  };
  try {
    await me.setLocalDescription(await me.createOffer());
    await new Promise((ok) => {
      if (me.iceGatheringState === "complete") return ok();
      me.onicegatheringstatechange = () => { if (me.iceGatheringState === "complete") ok(); };
      setTimeout(ok, 2000);
    });
    const r = await fetch("v1/offer", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ sdp: me.localDescription.sdp }) });
    if (r.status === 404) return; // no video on this unit's screen
    if (!r.ok) throw new Error("offer: " + r.status);
    const a = await r.json();
    a.mids.forEach((m, i) => { midSlot[m] = i; });
    await me.setRemoteDescription({ type: "answer", sdp: a.sdp });
  } catch (err) {
    console.error(err);
    if (pc === me) setTimeout(connect, 2000);
  }
}

window.addEventListener("resize", () => { if (view) layout(view); });
setup();
state();
connect();
setInterval(tick, 1000);
setInterval(watchdog, 200);
