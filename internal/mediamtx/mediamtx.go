// Package mediamtx starts a real MediaMTX (built from its Go module by
// .ci/cluster-setup.sh into .cache/bin/mediamtx) on 127.0.0.1 for tests:
// a WHIP server that is not LiveKit (issue 25). Its publishers are
// authorised by a bearer token the test chooses, checked by a small HTTP
// auth hook of the test's own (MediaMTX's authMethod "http"). Reader (in
// whep.go) is a pion WHEP reader that decodes the VP8 key frames it gets.
package mediamtx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
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
)

// Version is the MediaMTX the tests are run against (.ci/cluster-setup.sh).
const Version = "v1.20.1"

// EnvMediaMTX overrides where the mediamtx binary is looked up.
const EnvMediaMTX = "KONSULT_MEDIAMTX"

// Path is the one path the server has: publishing anywhere else is
// refused as an unknown path.
const Path = "unit"

// Server is a running MediaMTX with only its WebRTC server (WHIP/WHEP) and
// its control API on, both on 127.0.0.1.
type Server struct {
	URL     string // http://127.0.0.1:port of the WebRTC server
	API     string // http://127.0.0.1:port of the control API
	LogPath string

	token string
	auth  *httptest.Server
	mu    sync.Mutex
	asked []string // the actions the auth hook was asked about, "action path ok"
	cmd   *exec.Cmd
	done  chan struct{}
	once  sync.Once
}

// BinaryPath is the mediamtx binary, or "".
func BinaryPath() string {
	if p := os.Getenv(EnvMediaMTX); p != "" {
		return p
	}
	dir, _ := os.Getwd()
	for {
		p := filepath.Join(dir, ".cache", "bin", "mediamtx")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return ""
		}
		up := filepath.Dir(dir)
		if up == dir {
			return ""
		}
		dir = up
	}
}

// Start starts MediaMTX; publishing to Path needs "Authorization: Bearer
// token" (token "" lets anyone publish). Reading needs nothing. Stopped on
// t.Cleanup.
func Start(t testing.TB, token string) *Server {
	t.Helper()
	bin := BinaryPath()
	if bin == "" {
		msg := "mediamtx: binary not found (.cache/bin/mediamtx or $" + EnvMediaMTX + "); run .ci/cluster-setup.sh"
		if os.Getenv("KONSULT_REQUIRE_REAL_PARTS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s := &Server{token: token, done: make(chan struct{})}
	s.auth = httptest.NewServer(http.HandlerFunc(s.authorise))
	t.Cleanup(s.auth.Close)
	dir := t.TempDir()
	s.LogPath = filepath.Join(dir, "mediamtx.log")
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = s.start(bin, dir); err == nil {
			break
		}
		t.Logf("mediamtx: start attempt %d: %v", attempt+1, err)
	}
	if err != nil {
		t.Fatalf("mediamtx: %v\n%s", err, s.Log())
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("mediamtx log:\n%s", tail(s.Log(), 6000))
		}
	})
	return s
}

// authorise is MediaMTX's HTTP auth hook: publishing to Path needs the
// token; reading and the API are open (loopback only).
func (s *Server) authorise(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Token, Action, Path string
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	ok := req.Action != "publish" || s.token == "" || req.Token == s.token
	s.mu.Lock()
	s.asked = append(s.asked, fmt.Sprintf("%s %s %v", req.Action, req.Path, ok))
	s.mu.Unlock()
	if !ok {
		http.Error(w, "token refused", http.StatusUnauthorized)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// Asked lists the auth hook's decisions so far ("publish unit true").
func (s *Server) Asked() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asked...)
}

func freePort(network string) (int, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start(bin, dir string) error {
	web, err1 := freePort("tcp")
	api, err2 := freePort("tcp")
	udp, err3 := freePort("udp")
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	s.URL = fmt.Sprintf("http://127.0.0.1:%d", web)
	s.API = fmt.Sprintf("http://127.0.0.1:%d", api)
	// Everything but WebRTC and the API off (every other server, MoQ
	// included, listens on all interfaces by default); media on one
	// loopback UDP port, announced as 127.0.0.1 only; no STUN.
	cfg := fmt.Sprintf(`logLevel: debug
logDestinations: [stdout]
authMethod: http
authHTTPAddress: %s/auth
authHTTPExclude:
  - action: api
api: true
apiAddress: 127.0.0.1:%d
metrics: false
pprof: false
playback: false
rtsp: false
rtmp: false
hls: false
srt: false
moq: false
webrtc: true
webrtcAddress: 127.0.0.1:%d
webrtcEncryption: false
webrtcLocalUDPAddress: 127.0.0.1:%d
webrtcLocalTCPAddress: ""
webrtcIPsFromInterfaces: false
webrtcAdditionalHosts: [127.0.0.1]
webrtcICEServers2: []
paths:
  %s:
`, s.auth.URL, api, web, udp, Path)
	cfgPath := filepath.Join(dir, "mediamtx.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, cfgPath)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
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
			return errors.New("mediamtx exited during start")
		default:
		}
		if resp, err := client.Get(s.API + "/v3/paths/list"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			return errors.New("mediamtx API not answering after 15 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.cmd, s.done = cmd, done
	return nil
}

// WHIP is the publish endpoint of path; WHEP its read endpoint.
func (s *Server) WHIP(path string) string { return s.URL + "/" + path + "/whip" }
func (s *Server) WHEP(path string) string { return s.URL + "/" + path + "/whep" }

// Session is one WebRTC session as MediaMTX's API lists it.
type Session struct {
	ID    string `json:"id"`
	State string `json:"state"` // "publish" or "read"
	Path  string `json:"path"`
}

// Sessions lists the server's WebRTC sessions.
func (s *Server) Sessions(ctx context.Context) ([]Session, error) {
	var out struct {
		Items []Session `json:"items"`
	}
	return out.Items, s.get(ctx, "/v3/webrtcsessions/list", &out)
}

// Ready reports whether path has a publisher whose tracks are up.
func (s *Server) Ready(ctx context.Context, path string) (bool, error) {
	var out struct {
		Ready bool `json:"ready"`
	}
	err := s.get(ctx, "/v3/paths/get/"+path, &out)
	var he httpStatus
	if errors.As(err, &he) && he == http.StatusNotFound {
		return false, nil // no path without a publisher or reader
	}
	return out.Ready, err
}

type httpStatus int

func (h httpStatus) Error() string { return fmt.Sprintf("HTTP %d", int(h)) }

func (s *Server) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.API+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("mediamtx API %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("mediamtx API %s: %w", path, httpStatus(resp.StatusCode))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("mediamtx API %s: %w", path, err)
	}
	return nil
}

// Stop stops the server (SIGTERM, then SIGKILL after 3 s). Safe to call
// many times: use it to test "the server went away".
func (s *Server) Stop() {
	s.once.Do(func() {
		if s.cmd == nil {
			return
		}
		_ = syscall.Kill(s.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
	})
}

// Log is the server's output so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return string(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return strings.TrimLeft(s, "\n")
}
