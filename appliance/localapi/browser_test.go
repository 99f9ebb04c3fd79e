package localapi

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/headless"
)

type pageResult struct {
	Attack string `json:"attack"`
	Status int    `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error"`
}

// TestBrowserOnAnotherSiteCannotDriveTheUnit is finding 1 of issue 14 with a
// real browser: a page from another origin (another port on 127.0.0.1, then
// a foreign name rebound onto the API's own address and port) tries every
// way a browser offers to start a call, enrol, reset, or read the unit.
// The unit must never get a call, and the page must read nothing.
func TestBrowserOnAnotherSiteCannotDriveTheUnit(t *testing.T) {
	page, err := os.ReadFile("testdata/attack.html")
	if err != nil {
		t.Fatal(err)
	}
	u := &fakeUnit{}
	log, rec := newLogRecorder()
	unix, apiBase := startAPI(t, u, log)
	_, apiPort, _ := net.SplitHostPort(strings.TrimPrefix(apiBase, "http://"))

	// The rebinding origin: the attacker serves the page on
	// http://evil.example:P/, then P answers with the unit's API.
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rebindAddr := rl.Addr().String()
	_, rebindPort, _ := net.SplitHostPort(rebindAddr)

	var (
		mu      sync.Mutex
		results = map[string]pageResult{}
		loaded  = make(chan struct{})
		done    = make(chan struct{})
		goNow   = make(chan struct{})
	)
	attacker := http.NewServeMux()
	attacker.HandleFunc("POST /report", func(w http.ResponseWriter, r *http.Request) {
		var res pageResult
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
	site := httptest.NewServer(attacker) // 127.0.0.1, another port: another origin
	defer site.Close()
	config := func(phase string) string {
		b, _ := json.Marshal(map[string]string{
			"phase":      phase,
			"api":        apiBase,
			"foreignAPI": "http://evil.example:" + apiPort,
			"rebind":     "http://evil.example:" + rebindPort + "/",
			"report":     site.URL + "/report",
			"go":         site.URL + "/go",
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
		"--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	select {
	case <-loaded:
	case <-b.Exited():
		t.Fatal("chromium exited before the page was rebound")
	case <-ctx.Done():
		t.Fatalf("the attacker's page never reached the rebinding step; got %v", results)
	}
	// "DNS rebinding": the name and port the page came from now lead to
	// the unit's API.
	_ = rebindSite.Close()
	al, err := net.Listen("tcp", rebindAddr)
	if err != nil {
		t.Fatalf("take over the page's port for the API: %v", err)
	}
	serveLoopback(t, u, log, al)
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
		"form-join", "form-privacy_off", "form-enrol", "form-factory-reset", "form-press",
		"no-cors-join", "text-plain-join", "json-join", "read-status", "foreign-host-status",
		"rebind-status", "rebind-events", "rebind-doctor", "rebind-json-join",
	} {
		r, ok := results[attack]
		if !ok {
			t.Errorf("%s: the page did not report", attack)
			continue
		}
		t.Logf("%s: page read status %d, body %q (%s)", attack, r.Status, r.Body, r.Error)
		if r.Status >= 200 && r.Status < 300 || strings.Contains(r.Body, statusMarker) || strings.Contains(r.Body, "accepted") {
			t.Errorf("%s: the page read the unit's answer: status %d, body %q", attack, r.Status, r.Body)
		}
	}
	if calls := u.Calls(); len(calls) != 0 {
		t.Errorf("the unit was driven by a web page: %q", calls)
	}
	var st struct {
		State string `json:"state"`
	}
	if err := unix.Status(context.Background(), &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "idle" {
		t.Errorf("unit state through its socket is %q after the attacks, want idle", st.State)
	}
	// The test is only worth something if the browser's requests reached
	// the API (and were refused there), not if Chromium never sent them.
	for _, want := range []struct {
		what  string
		parts []string
	}{
		{"form and fetch POSTs to /v1/action", []string{"local api", "POST", "path=/v1/action"}},
		{"the form POST to /v1/enrol", []string{"local api", "POST", "path=/v1/enrol"}},
		{"the form POST to /v1/factory-reset", []string{"local api", "POST", "path=/v1/factory-reset"}},
		{"reads of /v1/status", []string{"local api", "GET", "path=/v1/status"}},
		{"the read of /v1/events", []string{"local api", "GET", "path=/v1/events"}},
	} {
		if rec.Count(want.parts...) == 0 {
			t.Errorf("%s never reached the API: the browser did not send them; API log:\n%s", want.what, rec)
		}
	}
	// 14 attacks, each refused at least once (json-join at its preflight).
	if n := rec.Count("local api: refused"); n < 14 {
		t.Errorf("only %d requests were refused by the API, want at least 14; API log:\n%s", n, rec)
	}
	if n := rec.Count("local api", "POST", "path=/v1/action"); n < 5 {
		t.Errorf("only %d POSTs to /v1/action reached the API, want 5 (2 forms, no-cors, text/plain, rebound JSON); API log:\n%s", n, rec)
	}
}
