package screen_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/screen"
	"github.com/konsult/konsult/internal/headless"
	"github.com/konsult/konsult/internal/syncbuf"
	"github.com/konsult/konsult/media/display"
	"github.com/konsult/konsult/media/gate"
)

type attackResult struct {
	Attack string `json:"attack"`
	Status int    `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error"`
}

// A page from another origin can neither read the screen's state nor get
// its media: from another port of 127.0.0.1 (cross-site), by a foreign
// name, and by DNS rebinding (a foreign name whose port then leads to the
// screen: same-origin for the browser, refused by Host). The display
// never gets a peer connection from it.
func TestPageFromAnotherOriginCannotReadTheScreen(t *testing.T) {
	page, err := os.ReadFile("testdata/attack.html")
	if err != nil {
		t.Fatal(err)
	}
	g := gate.New()
	g.Set(gate.State{Video: true, Audio: true})
	disp, err := display.New(display.Config{Gate: g, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer disp.Close()
	u := newFakeUnit(appliance.Status{State: appliance.InCall, Since: time.Now(), Shutter: "open"}, g)
	var logBuf syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	screenURL := strings.TrimSuffix(startServer(t, screen.Config{Room: "Room 3", Unit: u, Media: disp, Log: log}), "/")
	_, screenPort, _ := net.SplitHostPort(strings.TrimPrefix(screenURL, "http://"))

	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rebindAddr := rl.Addr().String()
	_, rebindPort, _ := net.SplitHostPort(rebindAddr)
	var (
		mu      sync.Mutex
		results = map[string]attackResult{}
		loaded  = make(chan struct{})
		done    = make(chan struct{})
		goNow   = make(chan struct{})
	)
	attacker := http.NewServeMux()
	attacker.HandleFunc("POST /report", func(w http.ResponseWriter, r *http.Request) {
		var res attackResult
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&res); err != nil {
			t.Errorf("page report: %v", err)
			return
		}
		mu.Lock()
		results[res.Attack] = res
		mu.Unlock()
		switch res.Attack {
		case "rebind-loaded":
			close(loaded)
		case "done":
			close(done)
		}
	})
	attacker.HandleFunc("GET /go", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		select {
		case <-goNow:
			_, _ = io.WriteString(w, "go")
		default:
			_, _ = io.WriteString(w, "wait")
		}
	})
	site := httptest.NewServer(attacker)
	defer site.Close()
	config := func(phase string) string {
		b, _ := json.Marshal(map[string]string{
			"phase": phase, "screen": screenURL, "foreign": "http://evil.example:" + screenPort,
			"rebind": "http://evil.example:" + rebindPort + "/", "report": site.URL + "/report", "go": site.URL + "/go",
		})
		return strings.Replace(string(page), "__ATTACK_CONFIG__", string(b), 1)
	}
	attacker.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, config("cross-site"))
	})
	rebindSite := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, config("rebind"))
	})}
	go func() { _ = rebindSite.Serve(rl) }()
	defer rebindSite.Close()

	b := headless.Start(t, site.URL+"/",
		"--host-resolver-rules=MAP evil.example 127.0.0.1",
		"--allow-loopback-in-peer-connection",
		"--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,WebRtcHideLocalIpsWithMdns")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	select {
	case <-loaded:
	case <-b.Exited():
		t.Fatal("chromium exited before the page was rebound")
	case <-ctx.Done():
		t.Fatalf("the attacker's page never reached the rebinding step; got %v", results)
	}
	// The name and port the page came from now lead to the screen.
	_ = rebindSite.Close()
	al, err := net.Listen("tcp", rebindAddr)
	if err != nil {
		t.Fatalf("take over the page's port for the screen: %v", err)
	}
	s2, err := screen.New(screen.Config{Room: "Room 3", Unit: u, Media: disp, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s2.Serve(al) }()
	defer s2.Shutdown(context.Background())
	close(goNow)
	select {
	case <-done:
	case <-b.Exited():
		t.Fatal("chromium exited before the page finished")
	case <-ctx.Done():
		t.Fatalf("the page did not finish; got %v", results)
	}

	mu.Lock()
	defer mu.Unlock()
	if r, ok := results["page-error"]; ok {
		t.Fatalf("the page failed: %+v", r)
	}
	for _, attack := range []string{
		"read-state", "stream-state", "eventsource-state", "read-page", "json-offer", "no-cors-offer", "text-plain-offer",
		"foreign-host-state", "rebind-page", "rebind-state", "rebind-eventsource", "rebind-offer",
	} {
		r, ok := results[attack]
		if !ok {
			t.Errorf("%s: the page did not report", attack)
			continue
		}
		t.Logf("%s: page read status %d, body %q (%s)", attack, r.Status, r.Body, r.Error)
		if r.Status >= 200 && r.Status < 300 || strings.Contains(r.Body, "camera_out") || strings.Contains(r.Body, "a=fingerprint") || strings.Contains(r.Body, "screen.js") {
			t.Errorf("%s: the page read the screen: status %d, body %q", attack, r.Status, r.Body)
		}
	}
	if n := disp.State().Pages; n != 0 {
		t.Errorf("the display feeds %d pages: an attacker's offer was answered", n)
	}
	// Worth something only if the requests reached the screen and were
	// refused there.
	if n := strings.Count(logBuf.String(), "refused a request from a browser or another site"); n < 10 {
		t.Errorf("only %d requests were refused by the screen's checks, want at least 10; log:\n%s", n, logBuf.String())
	}
}
