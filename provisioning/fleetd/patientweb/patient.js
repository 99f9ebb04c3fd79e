// The patient's page: plain JavaScript on livekit-client (UMD, global
// LivekitClient). The link is …/join#ID.SECRET.K; the fragment never
// reaches a server. SECRET is exchanged for a short token (POST
// /join/token); K is the end-to-end key, given only to livekit-client's
// own E2EE worker. document.body.dataset.state and .e2ee say where the
// page is (tests read them; so can a support desk).
(function () {
  "use strict";
  const LK = window.LivekitClient;
  const T = window.KONSULT_I18N;
  const $ = (id) => document.getElementById(id);
  const langs = ["nl", "es", "nb", "en"];
  const st = {
    lang: "en", clinic: "", code: "", err: "", start: null,
    room: null, stream: null, meterStop: null,
    e2ee: "checking", decryptErrors: 0, framesDecoded: 0,
    tracks: {}, errAt: {}, // per remote track: what it decoded; per participant: its last decryption error
    muted: false, camOff: false, tStart: performance.now(), tInCall: 0,
  };
  window.konsult = st; // read-only view for tests; holds no secret

  // --- the link ---
  const frag = location.hash.replace(/^#/, "").split(".");
  const link = { id: frag[0] || "", secret: frag[1] || "", k: frag[2] || "" };

  function b64url(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // The safety code (E2EE contract): SHA-256("konsult-safety-code-v1" || K),
  // first 8 bytes big-endian mod 10^8, "0123 4567".
  async function safetyCode(k) {
    const pre = new TextEncoder().encode("konsult-safety-code-v1");
    const buf = new Uint8Array(pre.length + k.length);
    buf.set(pre); buf.set(k, pre.length);
    const h = new DataView(await crypto.subtle.digest("SHA-256", buf));
    const n = h.getBigUint64(0, false) % 100000000n;
    const s = n.toString().padStart(8, "0");
    return s.slice(0, 4) + " " + s.slice(4);
  }
  window.konsultSafetyCode = async (hex) => {
    const b = new Uint8Array(hex.match(/../g).map((x) => parseInt(x, 16)));
    return safetyCode(b);
  };

  // --- language ---
  function pickLang() {
    for (const l of navigator.languages || [navigator.language || "en"]) {
      const base = l.toLowerCase().split("-")[0];
      if (base === "no" || base === "nn") return "nb";
      if (langs.includes(base)) return base;
    }
    return "en";
  }
  function t(key, vars) {
    let s = (T[st.lang] && T[st.lang][key]) || T.en[key] || key;
    for (const [k, v] of Object.entries(vars || {})) s = s.split("{" + k + "}").join(v);
    return s;
  }
  function render() {
    document.documentElement.lang = st.lang;
    $("lang").value = st.lang;
    for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t, { clinic: st.clinic });
    document.title = t("title", { clinic: st.clinic });
    $("mute").textContent = t(st.muted ? "unmute" : "mute");
    $("mute").setAttribute("aria-pressed", String(st.muted));
    $("camoff").textContent = t(st.camOff ? "cameraOn" : "cameraOff");
    $("camoff").setAttribute("aria-pressed", String(st.camOff));
    if (st.err) {
      const start = st.start ? new Date(st.start).toLocaleString(st.lang, { dateStyle: "medium", timeStyle: "short" }) : "";
      $("refused-msg").textContent = t(st.err, { start: start });
    }
    const e = $("e2ee");
    e.dataset.e2ee = st.e2ee;
    e.textContent = { checking: t("checking"), ok: t("e2eeOk", { code: st.code }), cannot_decrypt: t("cannotDecrypt"), clear: t("clear") }[st.e2ee];
    document.body.dataset.e2ee = st.e2ee;
  }
  function show(state) {
    for (const s of ["notice", "prejoin", "denied", "refused", "call", "left"]) $(s).hidden = s !== state && !(state === "joining" && s === "call");
    document.body.dataset.state = state;
  }
  function refuse(code, start) {
    st.err = code; st.start = start || null;
    stopPreview();
    show("refused"); render();
  }

  // --- the pre-join check ---
  async function openDevices(camId, micId) {
    stopPreview();
    const c = {
      video: camId ? { deviceId: { exact: camId } } : { width: { ideal: 1280 }, height: { ideal: 720 } },
      audio: micId ? { deviceId: { exact: micId }, echoCancellation: true, noiseSuppression: true } : { echoCancellation: true, noiseSuppression: true },
    };
    st.stream = await navigator.mediaDevices.getUserMedia(c);
    $("preview").srcObject = st.stream;
    await fillPickers();
    startMeter(st.stream);
  }
  async function fillPickers() {
    const devs = await navigator.mediaDevices.enumerateDevices();
    const cur = { videoinput: st.stream.getVideoTracks()[0], audioinput: st.stream.getAudioTracks()[0] };
    for (const [kind, sel] of [["videoinput", $("cam")], ["audioinput", $("mic")]]) {
      sel.textContent = "";
      const curId = cur[kind] && cur[kind].getSettings().deviceId;
      devs.filter((d) => d.kind === kind).forEach((d, i) => {
        const o = document.createElement("option");
        o.value = d.deviceId; o.textContent = d.label || kind + " " + (i + 1);
        if (d.deviceId === curId) o.selected = true;
        sel.appendChild(o);
      });
    }
  }
  function startMeter(stream) {
    if (!stream.getAudioTracks().length) return;
    const ac = new AudioContext();
    const src = ac.createMediaStreamSource(stream);
    const an = ac.createAnalyser();
    an.fftSize = 512;
    src.connect(an);
    const buf = new Uint8Array(an.fftSize);
    let run = true;
    const tick = () => {
      if (!run) return;
      an.getByteTimeDomainData(buf);
      let sum = 0;
      for (const v of buf) sum += ((v - 128) / 128) ** 2;
      const rms = Math.sqrt(sum / buf.length);
      $("level").style.width = Math.min(100, Math.round(rms * 400)) + "%";
      requestAnimationFrame(tick);
    };
    tick();
    st.meterStop = () => { run = false; ac.close(); };
  }
  function stopPreview() {
    if (st.meterStop) { st.meterStop(); st.meterStop = null; }
  }

  // --- the call ---
  function fleetdBase() {
    const m = document.querySelector('meta[name="konsult-fleetd"]');
    return (m && m.content) || "";
  }
  async function join(publish) {
    stopPreview();
    show("joining"); render();
    let ans;
    try {
      const r = await fetch(fleetdBase() + "/join/token", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ id: link.id, secret: link.secret }), referrerPolicy: "no-referrer", cache: "no-store",
      });
      ans = await r.json();
    } catch (e) {
      return refuse("trouble");
    }
    if (ans.error || !ans.token) return refuse(ans.error || "trouble", ans.start);

    const kp = new LK.ExternalE2EEKeyProvider();
    const room = new LK.Room({
      adaptiveStream: true, dynacast: true,
      e2ee: { keyProvider: kp, worker: new Worker("/join/lib/livekit-client.e2ee.worker.js") },
    });
    st.room = room;
    await kp.setKey(b64url(link.k).buffer);
    room.on(LK.RoomEvent.TrackSubscribed, (track) => {
      if (track.kind === "video") { track.attach($("remote")); $("waiting").hidden = true; }
      if (track.kind === "audio") { const a = track.attach(); a.hidden = true; document.body.appendChild(a); }
    });
    room.on(LK.RoomEvent.TrackUnsubscribed, (track) => { track.detach().forEach((el) => { if (el.tagName === "AUDIO") el.remove(); }); });
    room.on(LK.RoomEvent.EncryptionError, (e, p) => { st.decryptErrors++; st.errAt[p ? p.identity : ""] = performance.now(); checkE2EE(); });
    room.on(LK.RoomEvent.Disconnected, () => { if (document.body.dataset.state !== "left") { show("left"); render(); } });
    await room.setE2EEEnabled(true);
    try {
      await room.connect(ans.url, ans.token);
    } catch (e) {
      return refuse("trouble");
    }
    if (publish && st.stream) {
      for (const tr of st.stream.getTracks()) {
        await room.localParticipant.publishTrack(tr, { source: tr.kind === "video" ? LK.Track.Source.Camera : LK.Track.Source.Microphone });
      }
      $("self").srcObject = new MediaStream(st.stream.getVideoTracks());
    } else {
      $("mute").hidden = true; $("camoff").hidden = true; $("self").hidden = true;
    }
    st.tInCall = performance.now();
    show("call"); render();
    setInterval(checkE2EE, 500);
  }

  // "Encrypted end to end" only while every remote track in the room (the
  // unit's video and its audio, and anyone else's) is announced encrypted
  // and is decrypting: livekit-client's worker drops what it cannot
  // decrypt, so a track decrypts if something was decoded from it (video
  // frames; audio samples that are not concealment) and its sender had no
  // decryption error in the last errWindow. Any track announced in clear
  // makes the call "clear"; one that has had packets for graceMs and
  // decoded nothing, or whose sender keeps failing, "cannot_decrypt".
  const errWindow = 3000, graceMs = 4000;
  async function decodedOf(pub) {
    let decoded = 0, packets = 0;
    const stats = await pub.track.receiver.getStats();
    stats.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      packets += s.packetsReceived || 0;
      if (pub.kind === "video") decoded += s.framesDecoded || 0;
      else decoded += Math.max(0, (s.totalSamplesReceived || 0) - (s.concealedSamples || 0));
    });
    return { decoded, packets };
  }

  let checking = false;
  async function checkE2EE() {
    const room = st.room;
    if (!room || checking) return;
    checking = true;
    try {
      const now = performance.now();
      let clear = 0, ok = 0, failing = 0, pending = 0, frames = 0;
      const seen = {};
      for (const p of room.remoteParticipants.values()) {
        const erring = now - (st.errAt[p.identity] ?? -Infinity) < errWindow;
        for (const pub of p.trackPublications.values()) {
          if (!pub.isEncrypted) { clear++; continue; }
          if (!pub.isSubscribed || !pub.track || !pub.track.receiver) { pending++; continue; }
          const d = await decodedOf(pub);
          const tr = st.tracks[pub.trackSid] || { kind: pub.kind, from: p.identity, since: now, decoded: 0 };
          tr.decoded = d.decoded; tr.packets = d.packets;
          if (!(tr.packets > 0)) tr.since = now; // the grace runs from the first packet
          st.tracks[pub.trackSid] = tr; seen[pub.trackSid] = true;
          if (pub.kind === "video") frames += d.decoded;
          if (d.decoded > 0 && !erring) ok++;
          else if (erring || now - tr.since > graceMs) failing++;
          else pending++;
        }
      }
      for (const sid of Object.keys(st.tracks)) if (!seen[sid]) delete st.tracks[sid];
      st.framesDecoded = frames;
      let next = "checking";
      if (clear > 0) next = "clear"; // anyone in clear: the call is not end to end
      else if (failing > 0) next = "cannot_decrypt";
      else if (ok > 0 && pending === 0) next = "ok";
      if (next === "ok" && !st.code) st.code = await safetyCode(b64url(link.k));
      if (next !== st.e2ee) { st.e2ee = next; render(); }
    } finally {
      checking = false;
    }
  }

  // --- wiring ---
  async function init() {
    st.lang = pickLang();
    $("lang").addEventListener("change", () => { st.lang = $("lang").value; render(); });
    try {
      const r = await fetch(fleetdBase() + "/join/config.json", { cache: "no-store" });
      st.clinic = (await r.json()).clinic || "";
    } catch (e) { /* the notice reads without the name */ }
    if (!link.id || !link.secret || b64url(link.k || "").length !== 32) { render(); return refuse("unknown"); }
    show("notice"); render();
    $("continue").addEventListener("click", async () => {
      try {
        await openDevices();
        show("prejoin"); render();
      } catch (e) {
        st.deniedReason = e && e.name;
        show("denied"); render();
      }
    });
    $("cam").addEventListener("change", () => openDevices($("cam").value, $("mic").value).catch(() => { show("denied"); render(); }));
    $("mic").addEventListener("change", () => openDevices($("cam").value, $("mic").value).catch(() => { show("denied"); render(); }));
    $("join").addEventListener("click", () => join(true));
    $("join-listen").addEventListener("click", () => join(false));
    $("mute").addEventListener("click", async () => {
      st.muted = !st.muted;
      const pub = st.room && st.room.localParticipant.getTrackPublication(LK.Track.Source.Microphone);
      if (pub) await (st.muted ? pub.mute() : pub.unmute());
      render();
    });
    $("camoff").addEventListener("click", async () => {
      st.camOff = !st.camOff;
      const pub = st.room && st.room.localParticipant.getTrackPublication(LK.Track.Source.Camera);
      if (pub) await (st.camOff ? pub.mute() : pub.unmute());
      $("self").hidden = st.camOff;
      render();
    });
    $("leave").addEventListener("click", async () => {
      show("left"); render();
      if (st.room) await st.room.disconnect();
      if (st.stream) st.stream.getTracks().forEach((tr) => tr.stop());
    });
    window.addEventListener("pagehide", () => { if (st.room) st.room.disconnect(); });
  }
  init();
})();
