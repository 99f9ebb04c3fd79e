package farend

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/konsult/konsult/media/livekit"
)

// EnvRequireRealParts makes missing real parts (LiveKit binary, Chromium,
// livekit-client bundle) fail the test instead of skipping it. CI sets it
// to "1" after running .ci/farend-setup.sh.
const EnvRequireRealParts = "KONSULT_REQUIRE_REAL_PARTS"

// Environment variables that override where the real parts are looked up.
const (
	EnvLiveKitServer = "KONSULT_LIVEKIT_SERVER"    // path of the livekit-server binary
	EnvChromium      = "KONSULT_CHROMIUM"          // path of the chromium binary
	EnvLiveKitClient = "KONSULT_LIVEKIT_CLIENT_JS" // path of livekit-client.umd.js
)

// LiveKit is a real livekit-server process listening on 127.0.0.1 only.
type LiveKit struct {
	URL       string // http://127.0.0.1:port (HTTP API, WHIP, health)
	WSURL     string // ws://127.0.0.1:port (signalling URL for SDKs)
	APIKey    string
	APISecret string
	HTTPPort  int
	UDPPort   int    // the single WebRTC UDP port (ICE mux), bound to 127.0.0.1
	LogPath   string // livekit-server stdout+stderr
	StartTook time.Duration

	cmd      *exec.Cmd
	done     chan struct{}
	stopOnce sync.Once
	nodeIP   string
	extra    string // appended to the generated config (cluster.go: redis)
}

// missing skips or fails the test for a real part that is not installed.
func missing(t testing.TB, what string) {
	t.Helper()
	msg := fmt.Sprintf("farend: %s; run .ci/farend-setup.sh to install the real parts", what)
	if os.Getenv(EnvRequireRealParts) == "1" {
		t.Fatal(msg + " (" + EnvRequireRealParts + "=1, so this is fatal)")
	}
	t.Skip(msg + " (set " + EnvRequireRealParts + "=1 to make this fatal)")
}

// repoRoot finds the module root (the directory holding go.mod) by walking up
// from the working directory; go test runs in the package directory.
func repoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.Contains(b, []byte("module github.com/konsult/konsult")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func findPart(env string, candidates ...string) string {
	if p := os.Getenv(env); p != "" {
		candidates = append([]string{p}, candidates...)
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c
		}
	}
	return ""
}

// LiveKitServerPath returns the livekit-server binary used by StartLiveKit,
// or "" if it is not installed.
func LiveKitServerPath() string {
	root := repoRoot()
	var inRepo string
	if root != "" {
		inRepo = filepath.Join(root, ".cache", "bin", "server")
	}
	return findPart(EnvLiveKitServer, inRepo)
}

// FreeTCPPort returns a currently free TCP port on 127.0.0.1.
func FreeTCPPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreeUDPPort returns a currently free UDP port on 127.0.0.1.
func FreeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// liveKitConfig is the YAML handed to livekit-server. Everything listens on
// 127.0.0.1: bind_addresses for HTTP/WS, the UDP mux is restricted to the lo
// interface and 127.0.0.1, tcp_port 0 disables the ICE-over-TCP listener
// (which would ignore bind_addresses and listen on all interfaces), and TURN
// stays off. node_ip 127.0.0.1 + use_external_ip false means no STUN lookups.
func liveKitConfig(httpPort, udpPort int, key, secret, nodeIP string) string {
	ips := "[127.0.0.1/32]"
	if nodeIP != "127.0.0.1" {
		ips = "[127.0.0.1/32, " + nodeIP + "/32]"
	}
	return fmt.Sprintf(`port: %d
bind_addresses: [127.0.0.1]
keys:
  %s: %s
logging:
  level: info
rtc:
  tcp_port: 0
  udp_port: %d
  use_external_ip: false
  node_ip: %s
  enable_loopback_candidate: true
  interfaces:
    includes: [lo]
  ips:
    includes: %s
turn:
  enabled: false
`, httpPort, key, secret, udpPort, nodeIP, ips)
}

// LiveKitOption changes how the test server is started.
type LiveKitOption func(*LiveKit)

// AdvertiseIP makes the server also take media on ip (an address the test
// has put on lo) and advertise it as its node IP. The QEMU lab uses
// 10.0.2.2: its guest reaches the host's loopback at that address through
// QEMU's user network.
func AdvertiseIP(ip string) LiveKitOption { return func(lk *LiveKit) { lk.nodeIP = ip } }

// StartLiveKit starts a livekit-server on loopback and waits until it answers
// GET / with 200. It is stopped on t.Cleanup. If the binary is missing the
// test is skipped, or failed when KONSULT_REQUIRE_REAL_PARTS=1.
func StartLiveKit(t testing.TB, opts ...LiveKitOption) *LiveKit {
	t.Helper()
	bin := LiveKitServerPath()
	if bin == "" {
		missing(t, "livekit-server binary not found (.cache/bin/server or $"+EnvLiveKitServer+")")
	}
	dir := t.TempDir()
	lk := &LiveKit{
		APIKey:    "devkey",
		APISecret: "farend-" + randHex(16), // 39 chars, LiveKit wants >= 32
		LogPath:   filepath.Join(dir, "livekit.log"),
		done:      make(chan struct{}),
		nodeIP:    "127.0.0.1",
	}
	for _, o := range opts {
		o(lk)
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = lk.start(bin, dir); err == nil {
			break
		}
		t.Logf("farend: livekit start attempt %d: %v", attempt+1, err)
	}
	if err != nil {
		t.Fatalf("farend: starting livekit-server: %v\n%s", err, tailFile(lk.LogPath, 4000))
	}
	t.Cleanup(func() {
		lk.Stop()
		if t.Failed() {
			t.Logf("farend: livekit-server log tail:\n%s", tailFile(lk.LogPath, 6000))
		}
	})
	return lk
}

func (lk *LiveKit) start(bin, dir string) error {
	httpPort, err := FreeTCPPort()
	if err != nil {
		return err
	}
	udpPort, err := FreeUDPPort()
	if err != nil {
		return err
	}
	lk.HTTPPort, lk.UDPPort = httpPort, udpPort
	lk.URL = fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	lk.WSURL = fmt.Sprintf("ws://127.0.0.1:%d", httpPort)
	cfgPath := filepath.Join(dir, "livekit.yaml")
	if err := os.WriteFile(cfgPath, []byte(liveKitConfig(httpPort, udpPort, lk.APIKey, lk.APISecret, lk.nodeIP)+lk.extra), 0o600); err != nil {
		return err
	}
	logf, err := os.OpenFile(lk.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("livekit-server exited during start (%v)", cmd.ProcessState)
		default:
		}
		if resp, err := client.Get(lk.URL + "/"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.TrimSpace(string(body)) == "OK" {
				break
			}
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			return errors.New("livekit-server not ready after 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	lk.StartTook = time.Since(began)
	lk.cmd, lk.done = cmd, done
	return nil
}

// Stop stops the server now (SIGTERM twice, which LiveKit treats as "do not
// wait for participants", then SIGKILL after 3 s). Safe to call many times;
// use it to test "server went away mid-call".
func (lk *LiveKit) Stop() {
	lk.stopOnce.Do(func() {
		if lk.cmd == nil || lk.cmd.Process == nil {
			return
		}
		pid := lk.cmd.Process.Pid
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-lk.done:
			return
		case <-time.After(200 * time.Millisecond):
		}
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-lk.done:
			return
		case <-time.After(3 * time.Second):
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-lk.done
	})
}

// Pause freezes the server process (SIGSTOP) for d, then lets it go on
// (SIGCONT): to its clients a network break of d, with all of the server's
// state kept. Only the server this LiveKit started is signalled, by its
// PID.
func (lk *LiveKit) Pause(d time.Duration) error {
	if lk.cmd == nil || lk.cmd.Process == nil || lk.Exited() {
		return errors.New("farend: pause: the livekit-server is not running")
	}
	pid := lk.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("farend: pause livekit-server (pid %d): %w", pid, err)
	}
	time.Sleep(d)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		return fmt.Errorf("farend: resume livekit-server (pid %d): %w", pid, err)
	}
	return nil
}

// Exited reports whether the server process has ended.
func (lk *LiveKit) Exited() bool {
	select {
	case <-lk.done:
		return true
	default:
		return false
	}
}

// Log returns the server's output so far.
func (lk *LiveKit) Log() string {
	b, _ := os.ReadFile(lk.LogPath)
	return string(b)
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// VideoGrant is the "video" claim of a LiveKit access token.
type VideoGrant = livekit.VideoGrant

// SignToken makes an HS256 LiveKit access token for any grant.
func (lk *LiveKit) SignToken(identity string, grant VideoGrant, ttl time.Duration) string {
	tok, err := livekit.SignToken(lk.APIKey, lk.APISecret, identity, grant, ttl)
	if err != nil {
		panic(err) // the harness always has a key pair
	}
	return tok
}

// Token returns a join token for identity in room.
func (lk *LiveKit) Token(identity, room string, publish, subscribe bool, ttl time.Duration) string {
	return lk.SignToken(identity, VideoGrant{
		Room: room, RoomJoin: true,
		CanPublish: &publish, CanSubscribe: &subscribe, CanPublishData: &publish,
	}, ttl)
}

// Participants lists the identities in room through the RoomService Twirp
// API. A room that does not exist has no participants.
func (lk *LiveKit) Participants(ctx context.Context, room string) ([]string, error) {
	tok := lk.SignToken("", VideoGrant{Room: room, RoomAdmin: true, RoomList: true}, time.Minute)
	body, _ := json.Marshal(map[string]string{"room": room})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		lk.URL+"/twirp/livekit.RoomService/ListParticipants", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var te struct {
			Code string `json:"code"`
		}
		if json.Unmarshal(raw, &te) == nil && te.Code == "not_found" {
			return nil, nil
		}
		return nil, fmt.Errorf("ListParticipants %s: %s", resp.Status, strings.TrimSpace(string(raw)))
	}
	var out struct {
		Participants []struct {
			Identity string `json:"identity"`
		} `json:"participants"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("ListParticipants: %w: %s", err, raw)
	}
	ids := make([]string, 0, len(out.Participants))
	for _, p := range out.Participants {
		ids = append(ids, p.Identity)
	}
	return ids, nil
}
