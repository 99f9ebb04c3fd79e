// Package screentest is test support for the unit's own screen: a headless
// Chromium showing the display page (appliance/screen), driven over the
// DevTools protocol, and readers of what the page shows (tiles, self-view,
// the glass itself). appliance/screen's tests and roomd's end-to-end test
// share it.
package screentest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/headless"
)

// Browser is a headless Chromium showing the display page, driven
// over the DevTools protocol: the test reads the page as the glass shows it
// (DOM, <video> pixels through a canvas, screenshots).
type Browser struct {
	t    testing.TB
	b    *headless.Browser
	conn *websocket.Conn
	wmu  sync.Mutex
	id   atomic.Int64
	mu   sync.Mutex
	wait map[int64]chan cdpReply
	port int // DevTools: also how Usage finds the process
}

type cdpReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// Start opens url in a headless Chromium of w×h, as the kiosk would:
// no WebRTC flags (the loopback connection needs none), autoplay allowed;
// extra flags are added (a page that is not the screen may need some).
func Start(t testing.TB, url string, w, h int, extra ...string) *Browser {
	t.Helper()
	port, err := farend.FreeTCPPort()
	if err != nil {
		t.Fatal(err)
	}
	b := headless.Start(t, url, append([]string{
		"--remote-debugging-port=" + strconv.Itoa(port),
		"--autoplay-policy=no-user-gesture-required",
		"--disable-backgrounding-occluded-windows",
		"--hide-scrollbars",
		fmt.Sprintf("--window-size=%d,%d", w, h)}, extra...)...)
	sb := &Browser{t: t, b: b, wait: map[int64]chan cdpReply{}, port: port}
	deadline := time.Now().Add(20 * time.Second)
	var wsURL string
	for wsURL == "" {
		if time.Now().After(deadline) {
			t.Fatalf("chromium's DevTools did not come up:\n%s", b.Output())
		}
		time.Sleep(100 * time.Millisecond)
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/json/list", port))
		if err != nil {
			continue
		}
		var targets []struct {
			Type, URL            string
			WebSocketDebuggerURL string `json:"webSocketDebuggerUrl"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&targets)
		resp.Body.Close()
		for _, tg := range targets {
			if tg.Type == "page" {
				wsURL = tg.WebSocketDebuggerURL
			}
		}
	}
	c, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("devtools: %v", err)
	}
	sb.conn = c
	go sb.read()
	t.Cleanup(func() { c.Close() })
	sb.Call("Emulation.setDeviceMetricsOverride", map[string]any{"width": w, "height": h, "deviceScaleFactor": 1, "mobile": false})
	sb.loaded(20 * time.Second)
	return sb
}

// Output is what Chromium wrote to its stdout and stderr.
func (s *Browser) Output() string { return s.b.Output() }

func (s *Browser) read() {
	for {
		var m struct {
			ID int64 `json:"id"`
			cdpReply
		}
		if err := s.conn.ReadJSON(&m); err != nil {
			return
		}
		if m.ID == 0 {
			continue // an event
		}
		s.mu.Lock()
		ch := s.wait[m.ID]
		delete(s.wait, m.ID)
		s.mu.Unlock()
		if ch != nil {
			ch <- m.cdpReply
		}
	}
}

// Call sends one DevTools command and returns its result; an error ends
// the test.
func (s *Browser) Call(method string, params any) json.RawMessage {
	s.t.Helper()
	r, err := s.try(method, params)
	if err != nil {
		s.t.Fatal(err)
	}
	return r
}

func (s *Browser) try(method string, params any) (json.RawMessage, error) {
	id := s.id.Add(1)
	ch := make(chan cdpReply, 1)
	s.mu.Lock()
	s.wait[id] = ch
	s.mu.Unlock()
	s.wmu.Lock()
	err := s.conn.WriteJSON(map[string]any{"id": id, "method": method, "params": params})
	s.wmu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("devtools %s: %w", method, err)
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			return nil, fmt.Errorf("devtools %s: %s", method, r.Error.Message)
		}
		return r.Result, nil
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("devtools %s: no answer", method)
	}
}

// loaded waits for the first page to have a document that finished
// loading: before that the page has no execution context to evaluate in.
func (s *Browser) loaded(d time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		raw, err := s.try("Runtime.evaluate", map[string]any{"expression": "document.readyState", "returnByValue": true})
		var r struct {
			Result struct {
				Value string `json:"value"`
			} `json:"result"`
		}
		if err == nil && json.Unmarshal(raw, &r) == nil && r.Result.Value == "complete" {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the screen's page did not load within %s (%v, %q)", d, err, r.Result.Value)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Eval runs expr in the page (awaiting a promise) and decodes its JSON
// value into v.
func (s *Browser) Eval(expr string, v any) {
	s.t.Helper()
	raw := s.Call("Runtime.evaluate", map[string]any{"expression": expr, "awaitPromise": true, "returnByValue": true})
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		s.t.Fatal(err)
	}
	if r.Exception != nil {
		s.t.Fatalf("page: %s %s", r.Exception.Text, r.Exception.Exception.Description)
	}
	if v != nil {
		if err := json.Unmarshal(r.Result.Value, v); err != nil {
			s.t.Fatalf("page value %s: %v", r.Result.Value, err)
		}
	}
}

// Screenshot is a PNG of the page as shown.
func (s *Browser) Screenshot() []byte {
	s.t.Helper()
	var r struct {
		Data string `json:"data"`
	}
	if err := json.Unmarshal(s.Call("Page.captureScreenshot", map[string]any{"format": "png"}), &r); err != nil {
		s.t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		s.t.Fatal(err)
	}
	return b
}

// Navigate opens url in the page.
func (s *Browser) Navigate(url string) {
	s.Call("Page.navigate", map[string]any{"url": url})
}

// WaitUntil evaluates expr (a JSON-valued expression) until ok says yes.
func WaitUntil[T any](t testing.TB, s *Browser, what string, d time.Duration, expr string, ok func(T) bool) T {
	t.Helper()
	deadline := time.Now().Add(d)
	var v T
	for {
		var cur T
		s.Eval(expr, &cur)
		v = cur
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("screen: %s: not within %s; last %+v", what, d, v)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
