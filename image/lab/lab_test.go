//go:build linux && amd64

package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
)

const (
	envLab    = "KONSULT_LAB"       // 1: run the lab
	envNetns  = "KONSULT_LAB_NETNS" // set in the re-executed test inside the namespace
	hostAlias = "10.0.2.2"          // the host's loopback as QEMU's user network shows it to the guest
	identity  = "room-unit"         // roomd's participant
	room      = "lab-room"          //
	guestPort = 8080                // the guest agent
	labBudget = 6 * time.Minute     // the whole lab, boot to power-off
	// iceFlakeMarker names the one failure make lab retries (see JOIN).
	iceFlakeMarker = "LAB-ICE-THROUGH-SLIRP-FAILED"
)

// TestLab boots the lab and drives roomd through real kernel interfaces. It
// runs with KONSULT_LAB=1 (make lab). It re-executes itself inside a new
// network namespace (unshare -n) in which only loopback is up, with the
// host alias 10.0.2.2 on it: LiveKit, the far end's Chromium and QEMU's
// user network all live there, so nothing else is reachable.
func TestLab(t *testing.T) {
	if os.Getenv(envLab) == "" {
		t.Skip("the QEMU hardware lab runs with " + envLab + "=1 (make lab); about 3-5 minutes on 2 cores without KVM")
	}
	if os.Getenv(envNetns) == "" {
		// Downloads (kernel, sources) and module builds need the network,
		// which the namespace has not: do them first; inside, prepare.sh
		// finds everything in .cache/lab.
		prepare(t, repoRoot(t))
		reexecInNetns(t)
		return
	}
	runLab(t)
}

func reexecInNetns(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-n", "--", "/bin/sh", "-c",
		`ip link set lo up && ip addr add ` + hostAlias + `/32 dev lo && exec "$0" "$@"`,
		self, "-test.run", "^TestLab$", "-test.v", "-test.timeout", (labBudget + time.Minute).String()}
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), envNetns+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Dir, _ = os.Getwd()
	if err := cmd.Run(); err != nil {
		t.Fatalf("the lab inside its network namespace failed: %v (unshare -n needs root or CAP_SYS_ADMIN)", err)
	}
}

type parts struct {
	kv      map[string]string
	missing []string
}

func prepare(t *testing.T, root string) parts {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(root, "image/lab/prepare.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("image/lab/prepare.sh: %v", err)
	}
	p := parts{kv: map[string]string{}}
	for _, l := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		p.kv[k] = v
		if strings.HasPrefix(k, "MISSING_") {
			p.missing = append(p.missing, strings.TrimPrefix(k, "MISSING_")+": "+v)
		}
	}
	return p
}

func repoRoot(t *testing.T) string {
	wd, _ := os.Getwd()
	for d := wd; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	t.Fatal("no go.mod above " + wd)
	return ""
}

func goBuild(t *testing.T, root, out, pkg string, cgo bool, tags ...string) {
	t.Helper()
	args := []string{"build", "-trimpath", "-o", out}
	if len(tags) > 0 && tags[0] != "" {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+map[bool]string{true: "1", false: "0"}[cgo])
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

func runLab(t *testing.T) {
	began := time.Now()
	root := repoRoot(t)
	work := t.TempDir()
	step := func(what string) { t.Logf("[%6.1fs] %s", time.Since(began).Seconds(), what) }

	p := prepare(t, root)
	step("kernel " + p.kv["ABI"] + " (" + p.kv["VERSION"] + "), out-of-tree modules ready")
	for _, m := range p.missing {
		t.Logf("LAB RUNS WITHOUT %s", m)
	}

	goBuild(t, root, filepath.Join(work, "roomd"), "./cmd/roomd", true)
	// KONSULT_LAB_BENCH_TAGS=upstreammic: labbench with mediadevices' own
	// microphone driver, the echo bench's figure before devices_alsa.go.
	goBuild(t, root, filepath.Join(work, "labbench"), "./image/lab/labbench", true, os.Getenv("KONSULT_LAB_BENCH_TAGS"))
	goBuild(t, root, filepath.Join(work, "init"), "./image/lab/guest", false)
	step("roomd, labbench and the guest agent built")

	lk := farend.StartLiveKit(t, farend.AdvertiseIP(hostAlias))
	caPEM, proxyPort := farend.TLSFront(t, lk.URL, hostAlias)
	step(fmt.Sprintf("LiveKit on 127.0.0.1:%d, TLS front (test CA) on 127.0.0.1:%d = https://%s:%d in the guest", lk.HTTPPort, proxyPort, hostAlias, proxyPort))

	initrd := filepath.Join(work, "initrd.cpio")
	buildInitramfs(t, p, work, initrd, caPEM, fmt.Sprintf("https://%s:%d", hostAlias, proxyPort), lk)
	step("initramfs built")

	agentPort, err := farend.FreeTCPPort()
	if err != nil {
		t.Fatal(err)
	}
	qemuStart := time.Now()
	vm := startQEMU(t, p.kv["KERNEL"], initrd, agentPort, filepath.Join(work, "console.log"))
	agent := &agentClient{base: fmt.Sprintf("http://127.0.0.1:%d", agentPort), t: t}
	var h health
	if err := waitFor(90*time.Second, func() bool { return agent.getJSON("/health", &h) == nil }); err != nil {
		t.Fatalf("guest agent not up within 90 s: %v\nconsole:\n%s", err, tail(filepath.Join(work, "console.log"), 3000))
	}
	agentUp := time.Since(qemuStart)
	step(fmt.Sprintf("guest agent up %.1fs after QEMU start (guest uptime %s)", agentUp.Seconds(), h.Uptime))
	for _, m := range h.Missing {
		t.Logf("LAB RUNS WITHOUT (in the guest): %s", m)
	}
	defer func() {
		if t.Failed() {
			t.Logf("roomd log:\n%s", agent.get("/roomd/log"))
			t.Logf("guest events (last 3000 bytes):\n%s", lastBytes(agent.get("/events"), 3000))
			t.Logf("console tail:\n%s", tail(filepath.Join(work, "console.log"), 4000))
		}
		agent.post("/poweroff", "")
		vm.wait(10 * time.Second)
		step("guest powered off")
	}()

	if os.Getenv(envEcho) == "only" {
		// The echo bench alone (labbench -echo), no roomd and no call: the
		// quick loop for the snd-aloop echo path.
		benchEcho(t, agent, step)
		return
	}
	if h.GPIO == "" {
		t.Fatalf("no gpio-sim chip in the guest: roomd cannot run without its buttons and shutter (%v)", h.Missing)
	}
	roomdStart := time.Now()
	agent.post("/roomd/start", "")
	if err := waitFor(60*time.Second, func() bool { return agent.getJSON("/health", &h) == nil && h.RoomdReady > 0 }); err != nil {
		t.Fatalf("roomd not ready within 60 s")
	}
	step(fmt.Sprintf("roomd ready: %.1fs after its start, %.1fs after QEMU start (boot -> roomd ready)", time.Since(roomdStart).Seconds(), time.Since(qemuStart).Seconds()))
	if log := agent.get("/roomd/log"); true {
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "encoders chosen") || strings.Contains(l, "hardware encoder") {
				t.Logf("roomd: %s", l)
			}
		}
	}

	fe := farEndTalking(t, lk, "patient") // the echo test's known signal (echo_test.go)
	ctx, cancel := context.WithTimeout(context.Background(), labBudget)
	defer cancel()
	if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Connected && s.Published }); err != nil {
		t.Fatalf("far end did not connect: %v", err)
	}
	step("far end (headless Chromium) in the room")

	// JOIN: a finger on the button is the line's pull going down.
	pressAt := agent.press("JOIN")
	live, err := agent.waitLine("LED", "1", pressAt, 45*time.Second, time.Second)
	if err != nil {
		if strings.Contains(agent.get("/roomd/log"), "ICE connection failed") {
			// For whoever finds the cause: LiveKit's own view of ICE.
			if b, rerr := os.ReadFile(lk.LogPath); rerr == nil {
				var lines []string
				for _, l := range strings.Split(string(b), "\n") {
					if strings.Contains(l, "andidate") || strings.Contains(l, "ICE") || strings.Contains(l, "udp") {
						lines = append(lines, l)
					}
				}
				t.Logf("livekit-server log, ICE lines:\n%s", strings.Join(lines, "\n"))
			}
			// Which UDP sockets the namespace holds: slirp hands the guest's
			// packets for 10.0.2.2 to 127.0.0.1 on this side.
			if out, serr := exec.Command("ss", "-uanp").CombinedOutput(); serr == nil {
				t.Logf("UDP sockets in the lab's namespace (ss -uanp):\n%s", out)
			}
			// Seen in 2 of 9 CI runs: no ICE path from the guest through
			// QEMU's user network to LiveKit on the host, for both of
			// roomd's attempts, while the next lab run passes. make lab
			// runs the lab once more on this marker; the cause is open.
			t.Fatalf("%s: JOIN: %v (roomd: ICE to LiveKit through QEMU's user network failed)", iceFlakeMarker, err)
		}
		t.Fatalf("JOIN: %v", err)
	}
	first := agent.firstChange("LED", pressAt)
	t.Logf("BENCH JOIN line -> first LED change %.0f ms, -> LED steady LIVE %.0f ms (guest clock)", ms(first-pressAt), ms(live-pressAt))
	ev := agent.get("/events")
	if !strings.Contains(ev, "SHUTTER=1") || !strings.Contains(ev, "shutter open") {
		t.Errorf("JOIN: the shutter actuator did not open the shutter before LIVE:\n%s", ev)
	}
	vctx, vcancel := context.WithTimeout(ctx, 90*time.Second)
	defer vcancel()
	st, err := fe.WaitFor(vctx, func(s farend.FarEndStats) bool { return s.VideoFramesDecoded >= 10 })
	if err != nil {
		t.Fatalf("far end decoded no video from the unit: %v (stats %s)", err, fe.Stats())
	}
	step(fmt.Sprintf("far end decoded the unit's video: %d frames, %dx%d, %.1f fps", st.VideoFramesDecoded, st.FrameWidth, st.FrameHeight, st.FPS))
	// The microphone: snd-aloop's capture side through roomd's ALSA driver
	// and opus; what the unit plays of the far end comes back into it
	// through the loopback (echo_test.go).
	actx, acancel := context.WithTimeout(ctx, 30*time.Second)
	defer acancel()
	if st, err = fe.WaitFor(actx, func(s farend.FarEndStats) bool { return s.AudioPacketsReceived >= 25 }); err != nil {
		t.Errorf("far end received no audio from the unit's microphone: %v (stats %s)", err, fe.Stats())
	} else {
		step(fmt.Sprintf("far end received the unit's microphone: %d audio packets", st.AudioPacketsReceived))
	}

	// PRIVACY: shutter closes (actuator low, closed sensor), LED leaves
	// LIVE, and the far end's picture stops.
	pressAt = agent.press("PRIVACY")
	if _, err := agent.waitLine("SHUTTER", "0", pressAt, 10*time.Second, 0); err != nil {
		t.Errorf("PRIVACY: %v", err)
	}
	if agent.steady("LED", "1", 2500*time.Millisecond) {
		t.Errorf("PRIVACY: the LED still shows LIVE")
	}
	// While private the far end gets only the repeated slate (a uniform
	// picture, one every capture.SlateInterval), never vivid's pattern.
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	_, serr := fe.WaitFor(sctx, func(s farend.FarEndStats) bool { return s.LastFrameIsUniform })
	scancel()
	if serr != nil {
		t.Errorf("PRIVACY: the far end's picture is not the slate: %v (stats %s)", serr, fe.Stats())
	}
	before := fe.Stats().VideoFramesDecoded
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if s := fe.Stats(); !s.LastFrameIsUniform {
			t.Errorf("PRIVACY: the far end shows the room again while private (stats %s)", s)
			break
		}
	}
	if after, most := fe.Stats().VideoFramesDecoded, int(2*time.Second/capture.SlateInterval)+3; after > before+most {
		t.Errorf("PRIVACY: the far end decoded %d frames in 2 s of privacy: more than the repeated slate (at most %d)", after-before, most)
	}
	step("PRIVACY: shutter closed, LED not LIVE, far end on the slate")

	// LEAVE: the call ends, LED off, the unit leaves the room.
	pressAt = agent.press("LEAVE")
	if _, err := agent.waitLine("LED", "0", pressAt, 15*time.Second, 1500*time.Millisecond); err != nil {
		t.Errorf("LEAVE: %v", err)
	}
	if _, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool {
		for _, p := range s.RemoteParticipants {
			if p == identity {
				return false
			}
		}
		return true
	}); err != nil {
		t.Errorf("LEAVE: the unit is still in the room: %v", err)
	}
	step("LEAVE: LED off, unit left the room")

	// The M2M backend vs software on the same vivid frames, once roomd
	// has left the call and let go of the camera.
	benchOut := agent.get("/bench?frames=60")
	step("encoder benchmark: " + strings.TrimSpace(benchOut))
	var bench struct {
		Size    string `json:"size"`
		Error   string `json:"error"`
		Results []struct {
			Backend, Device, Error string
			Frames                 int
			FPS                    float64
			Keyframes              int
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(benchOut), &bench); err != nil || bench.Error != "" {
		t.Errorf("encoder benchmark did not run: %v %s", err, benchOut)
	}
	for _, r := range bench.Results {
		if r.Error != "" {
			t.Logf("LAB RUNS WITHOUT %s encoding: %s", r.Backend, r.Error)
			if r.Backend == "v4l2m2m" && len(p.missing) == 0 {
				t.Errorf("the V4L2 M2M backend failed against vicodec: %s", r.Error)
			}
			continue
		}
		t.Logf("BENCH %-9s %s: %d frames at %.1f fps (%s, %s)", r.Backend, bench.Size, r.Frames, r.FPS, r.Device, "TCG, 2 cores shared with other jobs")
	}

	// The echo through snd-aloop: the canceller on roomd's speaker and
	// microphone code without a call (benchEcho, ERLE ≥ 20 dB), then, opt-in,
	// full calls with the canceller and without (echo_test.go, envEcho says
	// why).
	fe.Close()
	benchEcho(t, agent, step)
	if os.Getenv(envEcho) != "" {
		echoCalls(t, ctx, agent, lk, step)
	} else {
		t.Logf("LAB RUNS WITHOUT the echo calls through snd-aloop (%s=1 runs them)", envEcho)
	}

	if d := time.Since(began); d > labBudget {
		t.Errorf("the lab took %s, over its budget of %s", d.Round(time.Second), labBudget)
	}
}

func ms(us int64) float64 { return float64(us) / 1000 }

func buildInitramfs(t *testing.T, p parts, work, out string, caPEM []byte, url string, lk *farend.LiveKit) {
	t.Helper()
	r := newInitramfs()
	r.copy("/init", filepath.Join(work, "init"), 0o755)
	r.copy("/bin/busybox", "/bin/busybox", 0o755)
	r.symlink("/bin/sh", "busybox")
	if err := r.binary("/usr/bin/roomd", filepath.Join(work, "roomd")); err != nil {
		t.Fatal(err)
	}
	if err := r.binary("/usr/bin/labbench", filepath.Join(work, "labbench")); err != nil {
		t.Fatal(err)
	}
	// miniaudio (roomd's ALSA microphone) dlopens libasound: ldd cannot
	// see it.
	for _, lib := range []string{"/lib/x86_64-linux-gnu/libasound.so.2"} {
		if _, err := os.Stat(lib); err != nil {
			t.Logf("LAB RUNS WITHOUT %s: %v (apt-get install libasound2)", lib, err)
			continue
		}
		r.copy(lib, lib, 0o755)
		if err := r.libs(lib); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.tree("/usr/share/alsa", "/usr/share/alsa"); err != nil {
		t.Logf("no ALSA configuration: %v", err)
	}
	// The microphone is snd-aloop's capture side through a plug that fixes
	// the format (mono S16 48 kHz; roomd's driver offers mono for a device
	// that takes any channel count), straight on hw:Loopback,1,0 with
	// roomd's 25-period capture buffer: a dsnoop in between lost 15-25 %
	// of the audio under TCG (mic at 75-85 % of real time), so the echo
	// came back with gaps. The speaker is the loopback's playback side
	// through a dmix of the same format (snd-aloop needs both sides to
	// agree), plug converting miniaudio's float: what it plays comes back
	// in the microphone. The dmix's buffer is 100 ms: with 200 ms the
	// speaker's refills after underruns moved the echo by up to 200 ms and
	// the mix ran so far ahead of the microphone that the canceller's
	// aligner realigned (ERLE 3.3 and 11.0 dB, against 12.6-15.4 dB).
	r.bytes("/etc/asound.conf", []byte(`pcm.labmic {
  type plug
  slave { pcm "hw:Loopback,1,0" channels 1 rate 48000 format S16_LE }
}
pcm.labspk {
  type dmix
  ipc_key 5979
  slave { pcm "hw:Loopback,0,0" channels 1 rate 48000 format S16_LE period_size 480 buffer_size 4800 }
}
pcm.labspkplug { type plug slave.pcm "labspk" }
pcm.!default {
  type asym
  playback.pcm "labspkplug"
  capture.pcm "labmic"
}
ctl.!default { type hw card Loopback }
`), 0o644)
	r.bytes("/etc/lab/ca.pem", caPEM, 0o644)
	r.bytes("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	r.bytes("/etc/group", []byte("root:x:0:\nvideo:x:44:\naudio:x:29:\n"), 0o644)

	oot := map[string]string{}
	for k, v := range p.kv {
		if strings.HasPrefix(k, "OOT_") {
			oot[strings.TrimPrefix(k, "OOT_")] = v
		}
	}
	want := []string{"e1000", "configfs", "vivid", "snd-aloop"}
	for _, m := range []string{"gpio_sim", "v4l2_mem2mem", "vicodec"} {
		if _, ok := oot[m]; ok {
			want = append(want, m)
		}
	}
	order, err := moduleOrder(p.kv["MODULES"], oot, want)
	if err != nil {
		t.Fatal(err)
	}
	params := map[string]string{
		"vivid":   "node_types=0x1 n_devs=1", // one capture node: /dev/video0
		"vicodec": "multiplanar=1",           // the multi-planar API, as the Pi's bcm2835-codec
	}
	var list strings.Builder
	for _, m := range order {
		name := strings.TrimSuffix(filepath.Base(m), ".ko")
		dst := "/lib/modules/" + name + ".ko"
		if isOOT(oot, m) {
			dst = "/lib/modules/oot/" + name + ".ko"
		}
		r.copy(dst, m, 0o644)
		fmt.Fprintf(&list, "%s %s\n", dst, params[norm(name)])
	}
	r.bytes("/etc/lab/modules", []byte(list.String()), 0o644)

	cfg := fmt.Sprintf(`# The QEMU lab's roomd: generic board on the gpio-sim chip (periph gpioioctl),
# vivid camera, snd-aloop microphone, LiveKit on the host over https.
[unit]
board = "generic"

[pins]
join = "JOIN"
leave = "LEAVE"
privacy = "PRIVACY"
mute = "MUTE"
led = "LED"
shutter = "SHUTTER"
shutter_open = "SHUTTER_OPEN"
shutter_closed = "SHUTTER_CLOSED"

[shutter]
timeout = "3s"

[call]
join_timeout = "60s"

[conference]
connector = "livekit-whip"    # the main call publishes only; the echo calls (KONSULT_LAB_ECHO) are two-way
url = %q
room = %q
identity = %q
api_key = %q
api_secret = %q
camera = "video0"            # mediadevices labels V4L2 cameras by node name
microphone = "64656661756c74" # "default" (the plug on hw:Loopback,1,0 in /etc/asound.conf); ALSA ids in hex
speaker = "default"           # ALSA's default playback: the dmix onto hw:Loopback,0,0 in /etc/asound.conf
width = 640
height = 360
fps = 15
video_bitrate_kbps = 600

[api]
http = ""

[fleet]
enabled = false

[log]
level = "info"
`, url, room, identity, lk.APIKey, lk.APISecret)
	r.bytes("/etc/konsult/roomd.toml", []byte(cfg), 0o600)
	r.bytes(configEchoAEC, echoConfig(cfg, true), 0o600)
	r.bytes(configEchoNoAEC, echoConfig(cfg, false), 0o600)

	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := r.write(f); err != nil {
		t.Fatal(err)
	}
}

func isOOT(oot map[string]string, p string) bool {
	for _, v := range oot {
		if v == p {
			return true
		}
	}
	return false
}

type qemu struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startQEMU(t *testing.T, kernel, initrd string, agentPort int, console string) *qemu {
	t.Helper()
	logf, err := os.Create(console)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-cpu", "max", "-smp", "2", "-m", "1024",
		"-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init",
		"-netdev", fmt.Sprintf("user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:%d-:%d", agentPort, guestPort),
		"-device", "e1000,netdev=n0")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu-system-x86_64: %v (apt-get install qemu-system-x86)", err)
	}
	q := &qemu{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(q.done) }()
	t.Cleanup(func() { q.wait(0) })
	return q
}

// wait gives the guest d to power off, then kills QEMU (only the process
// this test started, by its pid).
func (q *qemu) wait(d time.Duration) {
	select {
	case <-q.done:
		return
	case <-time.After(d):
	}
	_ = q.cmd.Process.Kill()
	<-q.done
}

type health struct {
	Uptime     string   `json:"uptime"`
	Missing    []string `json:"missing"`
	GPIO       string   `json:"gpio"`
	RoomdReady int64    `json:"roomd_ready_unix_us"`
}

type agentClient struct {
	base string
	t    *testing.T
}

var agentHTTP = &http.Client{Timeout: 5 * time.Minute}

func (a *agentClient) getJSON(path string, v any) error {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(a.base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func (a *agentClient) get(path string) string {
	resp, err := agentHTTP.Get(a.base + path)
	if err != nil {
		return "agent: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (a *agentClient) post(path, body string) string {
	resp, err := agentHTTP.Post(a.base+path, "text/plain", strings.NewReader(body))
	if err != nil {
		return "agent: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// press holds a button 150 ms: the pull goes down (pressed) and back up.
// It returns the guest-clock time of the press in µs.
func (a *agentClient) press(line string) int64 {
	at, _ := strconv.ParseInt(strings.TrimSpace(a.post("/pull?line="+line+"&pull=pull-down", "")), 10, 64)
	time.Sleep(150 * time.Millisecond)
	a.post("/pull?line="+line+"&pull=pull-up", "")
	return at
}

type lineEvent struct {
	at    int64
	line  string
	value string
}

func (a *agentClient) events() []lineEvent {
	var out []lineEvent
	sc := bufio.NewScanner(strings.NewReader(a.get("/events")))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		k, v, ok := strings.Cut(f[1], "=")
		if !ok {
			continue
		}
		at, _ := strconv.ParseInt(f[0], 10, 64)
		out = append(out, lineEvent{at, k, v})
	}
	return out
}

// waitLine waits until line has been at value, after since, for hold; it
// returns the guest time it got there.
func (a *agentClient) waitLine(line, value string, since int64, within, hold time.Duration) (int64, error) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var at int64 // the latest change to value after since, if it held
		for _, e := range a.events() {
			switch {
			case e.line != line:
			case e.value != value:
				at = 0
			case e.at >= since && at == 0:
				at = e.at
			}
		}
		if at != 0 {
			var h struct {
				Now int64 `json:"now_unix_us"`
			}
			if a.getJSON("/health", &h) == nil && time.Duration(h.Now-at)*time.Microsecond >= hold {
				return at, nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return 0, fmt.Errorf("line %s did not settle at %s within %s", line, value, within)
}

func (a *agentClient) firstChange(line string, since int64) int64 {
	for _, e := range a.events() {
		if e.line == line && e.at >= since {
			return e.at
		}
	}
	return since
}

// steady says whether line stayed at value over d.
func (a *agentClient) steady(line, value string, d time.Duration) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		var g map[string]map[string]string
		if a.getJSON("/gpio", &g) == nil && g[line]["value"] != value {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

func waitFor(d time.Duration, f func() bool) error {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if f() {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s", d)
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
