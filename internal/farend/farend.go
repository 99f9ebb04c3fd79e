package farend

import (
	"context"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/headless"
)

//go:embed page.html
var pageHTML string

// UniformStdDev is the pixel standard deviation (0..255, over a 64x36
// downscale) below which a frame counts as uniform (a slate, black, a flat
// colour) rather than a picture of the room.
const UniformStdDev = 6.0

// FarEndStats is what the far end's browser reported last.
type FarEndStats struct {
	Connected          bool     // signalling connected to the room
	State              string   // livekit-client ConnectionState
	Published          bool     // fake camera+mic published (Publish option)
	RemoteParticipants []string // identities the browser sees in the room
	// ParticipantsLeft lists every identity livekit-client reported as
	// disconnected (RoomEvent.ParticipantDisconnected), in order, since the
	// page joined.
	ParticipantsLeft []string

	VideoFrom            string  // identity whose video is measured
	VideoFramesDecoded   int     // inbound-rtp framesDecoded
	VideoPacketsReceived int     // inbound-rtp packetsReceived
	FPS                  float64 // decoded frames per second over the last second
	StatsFPS             float64 // inbound-rtp framesPerSecond as reported by Chromium
	FrameWidth           int
	FrameHeight          int
	FramesPresented      int // requestVideoFrameCallback callbacks (frames painted)

	// FirstFrameAt is the test server's wall clock on receipt of the first
	// report showing a decoded/presented frame. FirstFramePageAt is the
	// page's own time (performance.timeOrigin+now, same host clock) of the
	// first requestVideoFrameCallback, so it is ~0-100 ms earlier.
	FirstFrameAt     time.Time
	FirstFramePageAt time.Time
	// LastFrameAt is the page time of the latest presented frame (falls back
	// to receipt time of the latest report whose framesDecoded grew).
	LastFrameAt time.Time
	// Mean colour and pixel std-dev (0..255) of the latest presented frame.
	LastFrameMeanRGB   [3]float64
	LastFrameStdDev    float64
	LastFrameIsUniform bool

	// With ReadStamps: presented frames the page looked at for a capture
	// stamp, and those whose stamp read back valid (see StampLatencies).
	StampFramesRead  int
	StampFramesValid int

	// VideoFreezes is Chromium's inbound-rtp freezeCount for the measured
	// track (a frame shown much later than the frames before it).
	VideoFreezes int

	// VideoJitterBuffer: the measured video track's jitter-buffer and
	// decode counters (cumulative; see JitterBuffer.Since).
	VideoJitterBuffer JitterBuffer

	AudioFrom            string
	AudioEnergy          float64 // RMS (0..1) over the last ~170 ms
	AudioEnergyPeak      float64 // highest AudioEnergy seen so far
	AudioPacketsReceived int

	// E2EE: the page runs livekit-client's end-to-end encryption (option
	// E2EE); E2EEErrors counts its worker's encryption/decryption errors.
	E2EE       bool
	E2EEErrors int
	Errors     []string  // page errors (uncaught, connect, publish, ...)
	Left       bool      // the page has left the room (Close/Leave)
	ReceivedAt time.Time // test server receipt time of this report
	Reports    int       // number of reports received so far
}

type pageReport struct {
	Connected          bool         `json:"connected"`
	State              string       `json:"state"`
	Left               bool         `json:"left"`
	Published          bool         `json:"published"`
	RemoteParticipants []string     `json:"remoteParticipants"`
	ParticipantsLeft   []string     `json:"participantsLeft"`
	VideoFrom          string       `json:"videoFrom"`
	AudioFrom          string       `json:"audioFrom"`
	FramesPresented    int          `json:"framesPresented"`
	FirstFrameMs       float64      `json:"firstFrameMs"`
	LastFrameMs        float64      `json:"lastFrameMs"`
	MeanRGB            [3]float64   `json:"meanRGB"`
	StdDev             float64      `json:"stdDev"`
	FramesDecoded      int          `json:"framesDecoded"`
	FrameWidth         int          `json:"frameWidth"`
	FrameHeight        int          `json:"frameHeight"`
	VideoPackets       int          `json:"videoPackets"`
	StatsFPS           float64      `json:"statsFps"`
	FPS                float64      `json:"fps"`
	AudioPackets       int          `json:"audioPackets"`
	AudioEnergy        float64      `json:"audioEnergy"`
	AudioPeak          float64      `json:"audioPeak"`
	StampRead          int          `json:"stampRead"`
	StampValid         int          `json:"stampValid"`
	StampAges          []float64    `json:"stampAges"`
	Frames             [][3]float64 `json:"frames"`
	Bands              *pageBands   `json:"bands"`
	Freezes            int          `json:"freezes"`
	JitterBuffer       JitterBuffer `json:"jitterBuffer"`
	Errors             []string     `json:"errors"`
	E2EE               bool         `json:"e2ee"`
	E2EEErrors         int          `json:"e2eeErrors"`
	Logs               []string     `json:"logs"`
}

type config struct {
	publish    bool
	width      int
	height     int
	fps        int
	watch      string
	interval   time.Duration
	tokenTTL   time.Duration
	token      string
	extraFlags []string
	stamps     bool
	frames     bool
	// publishStamp: publish a drawn, time-stamped picture (PublishStamped)
	publishStamp bool
	signal       *Signal // PublishSignal
	bands        bool    // MeasureBands
	e2eeKey      []byte  // E2EE
	lowLatency   bool    // LowLatency
}

// Option configures StartFarEnd.
type Option func(*config)

// Publish makes the far end publish Chromium's fake camera (a moving test
// pattern) and fake microphone (periodic beeps). Default: subscribe only.
func Publish() Option { return func(c *config) { c.publish = true } }

// PublishStamped makes the far end publish, instead of the fake camera, a
// drawn picture (moving squares) with its draw time stamped across the top
// in the unit's stamp layout (media/capture/stamp.go), so the unit's own
// screen can measure far-end camera → unit screen glass to glass.
func PublishStamped() Option {
	return func(c *config) { c.publish, c.publishStamp = true, true }
}

// PublishVideo sets the published camera resolution and frame rate
// (default 640x360 at 30 fps, VP8, no simulcast). Implies Publish.
func PublishVideo(width, height, fps int) Option {
	return func(c *config) { c.publish, c.width, c.height, c.fps = true, width, height, fps }
}

// Watch measures only tracks from the participant with this identity
// (default: the first remote video and the first remote audio track).
func Watch(identity string) Option { return func(c *config) { c.watch = identity } }

// ReportInterval sets how often the page reports (default 100 ms).
func ReportInterval(d time.Duration) Option { return func(c *config) { c.interval = d } }

// WithToken joins with this token instead of one made by lk.Token (to test
// bad or expiring tokens).
func WithToken(token string) Option { return func(c *config) { c.token = token } }

// ReadStamps makes the page read the unit's capture-time stamp (see
// capture.WriteStamp) from every presented frame and report its age: the
// unit's clock and the browser's are the same host clock, so the age is the
// glass-to-glass latency up to the browser handing the frame to the
// compositor. The unit must stamp (roomd: [sim] stamp = true).
func ReadStamps() Option { return func(c *config) { c.stamps = true } }

// LogFrames makes the page report every presented frame (see Frames), not
// only the last one.
func LogFrames() Option { return func(c *config) { c.frames = true } }

// FrameSample is one presented frame at the far end.
type FrameSample struct {
	At      time.Time // page time it was handed to the compositor
	StdDev  float64   // pixel std-dev over a 64x36 downscale (UniformStdDev)
	Uniform bool      // a slate, black, a flat colour: not a picture of the room
	Stamp   int64     // its capture stamp (capture.StampMs) with ReadStamps; -1 none
}

// Frames are the frames presented so far (LogFrames), oldest first.
func (f *FarEnd) Frames() []FrameSample {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]FrameSample(nil), f.frames...)
}

// E2EE makes the page join with livekit-client's end-to-end encryption
// (ExternalE2EEKeyProvider.setKey(material), its own E2EE worker), as the
// patient page does with the key from its link. The key goes into the page
// only, never into a log.
func E2EE(material []byte) Option {
	return func(c *config) { c.e2eeKey = append([]byte(nil), material...) }
}

// ChromiumFlags adds command-line flags for Chromium.
func ChromiumFlags(flags ...string) Option {
	return func(c *config) { c.extraFlags = append(c.extraFlags, flags...) }
}

// FarEnd is a headless Chromium in a LiveKit room, playing the patient.
type FarEnd struct {
	Identity string
	Room     string
	PageURL  string
	Started  time.Time // when chromium was launched

	t      testing.TB
	srv    *httptest.Server
	cmd    *exec.Cmd
	done   chan struct{}
	stderr *headless.Tail

	mu        sync.Mutex
	stats     FarEndStats
	stampAges []time.Duration
	frames    []FrameSample
	bands     []BandSample
	changed   chan struct{}
	cmdOut    string
	pageLogs  []string

	closeOnce sync.Once
}

// ChromiumPath returns the Chromium binary used by StartFarEnd, or "".
func ChromiumPath() string {
	return findPart(EnvChromium, "/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser")
}

// LiveKitClientPath returns the livekit-client UMD bundle served to the page, or "".
func LiveKitClientPath() string {
	root := repoRoot()
	var inRepo string
	if root != "" {
		inRepo = filepath.Join(root, ".cache", "npm", "node_modules", "livekit-client", "dist", "livekit-client.umd.js")
	}
	return findPart(EnvLiveKitClient, inRepo)
}

// ChromiumArgs are the flags StartFarEnd launches Chromium with (before the
// page URL and any ChromiumFlags).
func ChromiumArgs(userDataDir string) []string {
	return []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--no-default-browser-check",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
		"--password-store=basic", "--use-mock-keychain",
		"--user-data-dir=" + userDataDir,
		"--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
		"--autoplay-policy=no-user-gesture-required",
		// loopback-only network: without this no ICE candidates are gathered
		"--allow-loopback-in-peer-connection",
		"--disable-features=WebRtcHideLocalIpsWithMdns",
		"--disable-background-timer-throttling", "--disable-renderer-backgrounding",
		"--disable-backgrounding-occluded-windows",
		"--window-size=800,600",
	}
}

// StartFarEnd launches headless Chromium on a page (served from 127.0.0.1)
// that joins room on lk as identity with livekit-client and reports what it
// receives every ~100 ms. It returns as soon as Chromium is launched; use
// WaitFor to wait for connection, frames or audio. Closed on t.Cleanup.
func StartFarEnd(t testing.TB, lk *LiveKit, room, identity string, opts ...Option) *FarEnd {
	t.Helper()
	c := config{width: 640, height: 360, fps: 30, interval: 100 * time.Millisecond, tokenTTL: time.Hour}
	for _, o := range opts {
		o(&c)
	}
	chromium := ChromiumPath()
	if chromium == "" {
		missing(t, "chromium not found (/usr/bin/chromium or $"+EnvChromium+")")
	}
	lkjs := LiveKitClientPath()
	if lkjs == "" {
		missing(t, "livekit-client bundle not found (.cache/npm/node_modules/livekit-client/dist/livekit-client.umd.js or $"+EnvLiveKitClient+")")
	}
	token := c.token
	if token == "" {
		token = lk.Token(identity, room, c.publish, true, c.tokenTTL)
	}
	f := &FarEnd{Identity: identity, Room: room, t: t, changed: make(chan struct{}), done: make(chan struct{}), stderr: headless.NewTail(64 << 10)}

	pageCfg, _ := json.Marshal(map[string]any{
		"url": lk.WSURL, "token": token, "identity": identity, "publish": c.publish,
		"width": c.width, "height": c.height, "fps": c.fps, "watch": c.watch,
		"report": "/report", "intervalMs": c.interval.Milliseconds(),
		"stamp": c.stamps, "frames": c.frames, "publishStamp": c.publishStamp,
		"signal": c.signal, "bands": c.bands, "band": SignalBand, "toneHz": ToneHz,
		"e2eeKey": hex.EncodeToString(c.e2eeKey), "lowLatency": c.lowLatency,
	})
	page := strings.Replace(pageHTML, "__FAREND_CONFIG__", string(pageCfg), 1)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte(page))
	})
	mux.HandleFunc("GET /livekit-client.umd.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		http.ServeFile(w, r, lkjs)
	})
	mux.HandleFunc("GET /livekit-client.e2ee.worker.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		http.ServeFile(w, r, filepath.Join(filepath.Dir(lkjs), "livekit-client.e2ee.worker.js"))
	})
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("POST /report", f.handleReport)
	f.srv = httptest.NewServer(mux) // listens on 127.0.0.1:0
	f.PageURL = f.srv.URL + "/"

	profile, err := os.MkdirTemp("", "farend-chromium-")
	if err != nil {
		f.srv.Close()
		t.Fatalf("farend: %v", err)
	}
	args := append(ChromiumArgs(profile), c.extraFlags...)
	args = append(args, f.PageURL)
	f.cmd = exec.Command(chromium, args...)
	f.cmd.Stdout, f.cmd.Stderr = f.stderr, f.stderr
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	headless.BecomeSubreaper()
	f.Started = time.Now()
	if err := f.cmd.Start(); err != nil {
		f.srv.Close()
		os.RemoveAll(profile)
		t.Fatalf("farend: starting chromium: %v", err)
	}
	go func() {
		_ = f.cmd.Wait()
		close(f.done)
		f.mu.Lock()
		f.notifyLocked()
		f.mu.Unlock()
	}()
	t.Cleanup(func() {
		f.Close()
		os.RemoveAll(profile)
		if t.Failed() {
			f.dumpDiagnostics()
		}
	})
	return f
}

func (f *FarEnd) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *FarEnd) handleReport(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	var p pageReport
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&p); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	prev := f.stats
	s := FarEndStats{
		Connected: p.Connected, State: p.State, Published: p.Published, Left: p.Left,
		RemoteParticipants: p.RemoteParticipants, ParticipantsLeft: p.ParticipantsLeft,
		VideoFrom: p.VideoFrom, VideoFramesDecoded: p.FramesDecoded, VideoPacketsReceived: p.VideoPackets,
		FPS: p.FPS, StatsFPS: p.StatsFPS, FrameWidth: p.FrameWidth, FrameHeight: p.FrameHeight,
		FramesPresented:  p.FramesPresented,
		FirstFrameAt:     prev.FirstFrameAt,
		LastFrameAt:      prev.LastFrameAt,
		LastFrameMeanRGB: p.MeanRGB, LastFrameStdDev: p.StdDev,
		LastFrameIsUniform: p.StdDev >= 0 && p.FramesPresented > 0 && p.StdDev < UniformStdDev,
		AudioFrom:          p.AudioFrom, AudioEnergy: p.AudioEnergy, AudioEnergyPeak: p.AudioPeak,
		AudioPacketsReceived: p.AudioPackets,
		Errors:               p.Errors,
		E2EE:                 p.E2EE, E2EEErrors: p.E2EEErrors,
		ReceivedAt: now,
		Reports:    prev.Reports + 1,
	}
	s.StampFramesRead, s.StampFramesValid = p.StampRead, p.StampValid
	s.VideoFreezes, s.VideoJitterBuffer = p.Freezes, p.JitterBuffer
	for _, fr := range p.Frames {
		f.frames = append(f.frames, FrameSample{At: msTime(fr[0]), StdDev: fr[1], Uniform: fr[1] >= 0 && fr[1] < UniformStdDev, Stamp: int64(fr[2])})
	}
	if s.FirstFrameAt.IsZero() && (p.FramesDecoded > 0 || p.FramesPresented > 0) {
		s.FirstFrameAt = now
	}
	if p.FirstFrameMs > 0 {
		s.FirstFramePageAt = msTime(p.FirstFrameMs)
	}
	if p.LastFrameMs > 0 {
		s.LastFrameAt = msTime(p.LastFrameMs)
	} else if p.FramesDecoded > prev.VideoFramesDecoded {
		s.LastFrameAt = now
	}
	f.stats = s
	for _, ms := range p.StampAges {
		f.stampAges = append(f.stampAges, time.Duration(ms*float64(time.Millisecond)))
	}
	f.addBands(now, p.Bands)
	f.pageLogs = append(f.pageLogs, p.Logs...)
	if n := len(f.pageLogs); n > 500 {
		f.pageLogs = f.pageLogs[n-500:]
	}
	cmd := f.cmdOut
	f.notifyLocked()
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, `{"cmd":%q}`, cmd)
}

func msTime(ms float64) time.Time {
	sec, frac := math.Modf(ms / 1000)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// Stats returns the latest report (zero value before the first one).
func (f *FarEnd) Stats() FarEndStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// StampLatencies are the ages of the capture stamps read so far (ReadStamps),
// oldest first: one per presented frame whose stamp read back valid.
func (f *FarEnd) StampLatencies() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Duration(nil), f.stampAges...)
}

// PageLog returns the page's log lines so far (connection events, errors).
func (f *FarEnd) PageLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.pageLogs...)
}

// ChromiumOutput returns the tail of Chromium's stdout/stderr.
func (f *FarEnd) ChromiumOutput() string { return f.stderr.String() }

// ErrBrowserExited is returned by WaitFor when Chromium is gone.
var ErrBrowserExited = errors.New("farend: chromium exited")

// WaitFor blocks until cond holds for a report, and returns that report. On
// ctx's end it returns the latest report and ctx's error.
func (f *FarEnd) WaitFor(ctx context.Context, cond func(FarEndStats) bool) (FarEndStats, error) {
	for {
		f.mu.Lock()
		s, ch := f.stats, f.changed
		f.mu.Unlock()
		if s.Reports > 0 && cond(s) {
			return s, nil
		}
		select {
		case <-f.done:
			return f.Stats(), ErrBrowserExited
		default:
		}
		select {
		case <-ch:
		case <-f.done:
		case <-ctx.Done():
			return s, fmt.Errorf("farend %s: %w (last stats: %s)", f.Identity, ctx.Err(), s)
		}
	}
}

// Leave makes the page disconnect from the room (the browser keeps running)
// and waits up to 5 s for it to confirm.
func (f *FarEnd) Leave() error {
	f.mu.Lock()
	f.cmdOut = "leave"
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := f.WaitFor(ctx, func(s FarEndStats) bool { return s.Left })
	return err
}

// Close leaves the room (briefly), kills Chromium's process group and stops
// the page server. Safe to call many times; also run on t.Cleanup.
func (f *FarEnd) Close() {
	f.closeOnce.Do(func() {
		select {
		case <-f.done:
		default:
			f.mu.Lock()
			f.cmdOut = "leave"
			f.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = f.WaitFor(ctx, func(s FarEndStats) bool { return s.Left })
			cancel()
			pid := f.cmd.Process.Pid
			_ = syscall.Kill(-pid, syscall.SIGTERM)
			select {
			case <-f.done:
			case <-time.After(2 * time.Second):
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				<-f.done
			}
			// Renderer/zygote children share the group; kill and reap them
			// (they are reparented to us, see headless.BecomeSubreaper) so no
			// zombies are left behind.
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			headless.ReapGroup(pid, 2*time.Second)
		}
		f.srv.CloseClientConnections()
		f.srv.Close()
	})
}

func (f *FarEnd) dumpDiagnostics() {
	f.t.Logf("farend %s: last stats: %s", f.Identity, f.Stats())
	f.t.Logf("farend %s: page log:\n%s", f.Identity, strings.Join(f.PageLog(), "\n"))
	out := f.stderr.String()
	if len(out) > 6000 {
		out = out[len(out)-6000:]
	}
	f.t.Logf("farend %s: chromium output tail:\n%s", f.Identity, out)
}

// String is a compact one-line summary for logs.
func (s FarEndStats) String() string {
	return fmt.Sprintf("connected=%v state=%q remote=%v video[from=%q decoded=%d presented=%d fps=%.1f %dx%d mean=(%.0f,%.0f,%.0f) std=%.1f uniform=%v] audio[from=%q energy=%.4f peak=%.4f pkts=%d] errors=%q",
		s.Connected, s.State, s.RemoteParticipants, s.VideoFrom, s.VideoFramesDecoded, s.FramesPresented, s.FPS,
		s.FrameWidth, s.FrameHeight, s.LastFrameMeanRGB[0], s.LastFrameMeanRGB[1], s.LastFrameMeanRGB[2],
		s.LastFrameStdDev, s.LastFrameIsUniform, s.AudioFrom, s.AudioEnergy, s.AudioEnergyPeak, s.AudioPacketsReceived, s.Errors)
}
