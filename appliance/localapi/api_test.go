package localapi

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
)

// req is one raw request, as a browser, curl or an attacker could send it.
type req struct {
	method, path, host, body string
	header                   http.Header
}

// send makes r over hc (base "http://127.0.0.1:P" or the unix client's).
func send(t *testing.T, hc *http.Client, base string, r req) (int, string) {
	t.Helper()
	method := r.method
	if method == "" {
		method = http.MethodPost
	}
	hr, err := http.NewRequest(method, base+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	if r.body == "" {
		hr.Body = nil
	}
	for k, vs := range r.header {
		hr.Header[k] = vs
	}
	if r.host != "" {
		hr.Host = r.host
	}
	resp, err := hc.Do(hr)
	if err != nil {
		t.Fatalf("%s %s: %v", method, r.path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, string(b)
}

// testHTTP gives up rather than hang on an answer that never ends (an
// event stream the API should have refused).
var testHTTP = &http.Client{Timeout: 5 * time.Second}

func jsonHeader() http.Header { return http.Header{"Content-Type": {"application/json"}} }

func join() req {
	return req{method: "POST", path: "/v1/action", body: `{"action":"join"}`, header: jsonHeader()}
}

func portOf(t *testing.T, base string) string {
	_, p, err := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A DNS-rebinding page sends its own name as Host; so does anything but a
// loopback client.
func TestHTTPRefusesAHostThatIsNotLoopback(t *testing.T) {
	u := &fakeUnit{}
	log, _ := newLogRecorder()
	_, base := startAPI(t, u, log)
	port := portOf(t, base)
	for _, host := range []string{
		"evil.example:" + port, "evil.example", "127.0.0.1", "127.0.0.1:1", "localhost.:" + port,
		"127.0.0.2:" + port, "127.0.0.1.nip.io:" + port, "0.0.0.0:" + port, "[::ffff:127.0.0.1]:" + port,
	} {
		for _, r := range []req{join(), {method: "GET", path: "/v1/status"}, {method: "GET", path: "/v1/events"}} {
			r.host = host
			code, body := send(t, testHTTP, base, r)
			if code != http.StatusMisdirectedRequest {
				t.Errorf("%s %s with Host %q: %d %s, want 421", r.method, r.path, host, code, body)
			}
			if strings.Contains(body, statusMarker) {
				t.Errorf("Host %q read the unit: %s", host, body)
			}
		}
	}
	// HTTP/1.0 may leave out Host altogether.
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/action HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"action\":\"join\"}")
	line, _ := bufio.NewReader(c).ReadString('\n')
	if !strings.Contains(line, "421") {
		t.Errorf("HTTP/1.0 without Host: %q, want 421", line)
	}
	if calls := u.Calls(); len(calls) != 0 {
		t.Fatalf("the unit acted on a request for another host: %q", calls)
	}
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port, "LocalHost:" + port, "[::1]:" + port} {
		r := join()
		r.host = host
		if code, body := send(t, testHTTP, base, r); code != http.StatusAccepted {
			t.Errorf("Host %q: %d %s, want 202", host, code, body)
		}
	}
	if n := len(u.Calls()); n != 4 {
		t.Fatalf("%d joins from loopback hosts reached the unit, want 4", n)
	}
}

// Every cross-origin POST a browser makes (form, no-cors fetch) carries
// Origin; Sec-Fetch-Site marks cross-site GETs too.
func TestHTTPRefusesAnotherOrigin(t *testing.T) {
	u := &fakeUnit{}
	log, _ := newLogRecorder()
	_, base := startAPI(t, u, log)
	port := portOf(t, base)
	for _, h := range []http.Header{
		{"Origin": {"http://evil.example"}},
		{"Origin": {"http://127.0.0.1:1"}},
		{"Origin": {"http://localhost"}},
		{"Origin": {"https://127.0.0.1:" + port}},
		{"Origin": {"null"}}, // sandboxed iframes, file:// pages
		{"Origin": {"http://127.0.0.1:" + port, "http://evil.example"}},
		{"Sec-Fetch-Site": {"cross-site"}},
		{"Sec-Fetch-Site": {"same-site"}}, // another port on 127.0.0.1 is same-site
	} {
		for _, r := range []req{join(), {method: "GET", path: "/v1/status"}, {method: "GET", path: "/v1/events"}} {
			for k, v := range h {
				if r.header == nil {
					r.header = http.Header{}
				}
				r.header[k] = v
			}
			code, body := send(t, testHTTP, base, r)
			if code != http.StatusForbidden || strings.Contains(body, statusMarker) {
				t.Errorf("%s %s with %v: %d %s, want 403", r.method, r.path, h, code, body)
			}
		}
	}
	if calls := u.Calls(); len(calls) != 0 {
		t.Fatalf("the unit acted on a request from another origin: %q", calls)
	}
	r := join()
	r.header.Set("Origin", "http://127.0.0.1:"+port)
	r.header.Set("Sec-Fetch-Site", "same-origin")
	if code, body := send(t, testHTTP, base, r); code != http.StatusAccepted {
		t.Errorf("the unit's own origin: %d %s, want 202", code, body)
	}
}

// A form or fetch may send text/plain, urlencoded or multipart cross-site
// without a CORS preflight; JSON needs one. The rule holds on both
// listeners, so a script works the same on either.
func TestPostMustBeJSON(t *testing.T) {
	u := &fakeUnit{}
	log, _ := newLogRecorder()
	unix, base := startAPI(t, u, log)
	for _, tr := range []struct {
		name string
		hc   *http.Client
		base string
	}{{"http", testHTTP, base}, {"unix", unix.hc, unix.base}} {
		for _, ct := range [][]string{
			{"text/plain"}, {"text/plain;charset=UTF-8"}, {"application/x-www-form-urlencoded"},
			{"multipart/form-data; boundary=x"}, nil, {""}, {"application/json; charset=latin1"},
			{"application/json; foo=bar"}, {"application/jsonx"}, {"application/json", "application/json"},
		} {
			r := req{path: "/v1/action", body: `{"action":"join"}`, header: http.Header{}}
			if ct != nil {
				r.header["Content-Type"] = ct
			}
			if code, body := send(t, tr.hc, tr.base, r); code != http.StatusUnsupportedMediaType {
				t.Errorf("%s: Content-Type %q: %d %s, want 415", tr.name, ct, code, body)
			}
		}
		if calls := u.Calls(); len(calls) != 0 {
			t.Fatalf("%s: the unit acted on a body that was not JSON: %q", tr.name, calls)
		}
		for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON;Charset=UTF-8"} {
			r := join()
			r.header.Set("Content-Type", ct)
			if code, body := send(t, tr.hc, tr.base, r); code != http.StatusAccepted {
				t.Errorf("%s: Content-Type %q: %d %s, want 202", tr.name, ct, code, body)
			}
		}
		u.mu.Lock()
		u.calls = nil
		u.mu.Unlock()
	}
}

// {"action":"join"}= is what an HTML form with enctype text/plain sends.
func TestTrailingDataIsRefused(t *testing.T) {
	u := &fakeUnit{}
	log, _ := newLogRecorder()
	unix, base := startAPI(t, u, log)
	for _, tr := range []struct {
		name string
		hc   *http.Client
		base string
	}{{"http", testHTTP, base}, {"unix", unix.hc, unix.base}} {
		for _, body := range []string{
			"{\"action\":\"join\"}=", "{\"action\":\"join\"}=\r\n", `{"action":"join"}{"action":"leave"}`,
			`{"action":"join"} x`, `{"action":"join"}]`, `{"action":"join"}"`,
		} {
			r := join()
			r.body = body
			if code, resp := send(t, tr.hc, tr.base, r); code != http.StatusBadRequest {
				t.Errorf("%s: body %q: %d %s, want 400", tr.name, body, code, resp)
			}
		}
		for _, p := range []struct{ path, body string }{
			{"/v1/enrol", `{"code":"X"}=`}, {"/v1/factory-reset", `{"confirm":true}=`},
			{"/v1/press", `{"button":"join"}=`}, {"/v1/fault", `{"fault":"x","on":true}=`},
		} {
			if tr.name != "unix" {
				continue
			}
			if code, resp := send(t, tr.hc, tr.base, req{path: p.path, body: p.body, header: jsonHeader()}); code != http.StatusBadRequest {
				t.Errorf("%s %s: body %q: %d %s, want 400", tr.name, p.path, p.body, code, resp)
			}
		}
		if calls := u.Calls(); len(calls) != 0 {
			t.Fatalf("%s: the unit acted on a body with data after the JSON: %q", tr.name, calls)
		}
		r := join()
		r.body = "{\"action\":\"join\"}\n"
		if code, resp := send(t, tr.hc, tr.base, r); code != http.StatusAccepted {
			t.Errorf("%s: a trailing newline: %d %s, want 202", tr.name, code, resp)
		}
		u.mu.Lock()
		u.calls = nil
		u.mu.Unlock()
	}
}

// A same-origin page (or any local user, over TCP) must not enrol, wipe,
// or press the simulated buttons; roomctl does these on the socket.
func TestUnixOnlyCalls(t *testing.T) {
	u := &fakeUnit{}
	log, _ := newLogRecorder()
	unix, base := startAPI(t, u, log)
	calls := []req{
		{path: "/v1/enrol", body: `{"code":"ABCD-1234"}`, header: jsonHeader()},
		{path: "/v1/factory-reset", body: `{"confirm":true}`, header: jsonHeader()},
		{path: "/v1/press", body: `{"button":"join","hold_ms":10}`, header: jsonHeader()},
		{path: "/v1/fault", body: `{"fault":"stuck_shutter","on":true}`, header: jsonHeader()},
	}
	for _, r := range calls {
		code, body := send(t, testHTTP, base, r)
		if code != http.StatusForbidden || !strings.Contains(body, "unix socket") {
			t.Errorf("HTTP %s: %d %s, want 403 naming the unix socket", r.path, code, body)
		}
	}
	if got := u.Calls(); len(got) != 0 {
		t.Fatalf("over HTTP the unit did %q", got)
	}
	for _, r := range calls {
		code, body := send(t, unix.hc, unix.base, r)
		if code >= 300 {
			t.Errorf("unix %s: %d %s, want it served", r.path, code, body)
		}
	}
	want := []string{"enrol", "factory-reset", "press join", "fault stuck_shutter"}
	if got := u.Calls(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("on the socket the unit did %q, want %q", got, want)
	}
	// roomctl --http gets the reason, not a bare status.
	err := Dial(base).Enrol(context.Background(), "ABCD-1234")
	if err == nil || !strings.Contains(err.Error(), "unix socket") {
		t.Fatalf("roomctl --http enrol: %v, want the unix-socket refusal", err)
	}
}

// roomctl --http keeps working: the client says application/json.
func TestClientOverHTTP(t *testing.T) {
	u := &fakeUnit{}
	log, _ := newLogRecorder()
	_, base := startAPI(t, u, log)
	c := Dial(base)
	ctx := context.Background()
	if err := c.Action(ctx, "join"); err != nil {
		t.Fatal(err)
	}
	var st struct{ State string }
	if err := c.Status(ctx, &st); err != nil || st.State != "joining" {
		t.Fatalf("status over HTTP: %+v, %v", st, err)
	}
	got := make(chan appliance.Event, 1)
	ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Events(ectx, func(ev appliance.Event) bool { got <- ev; return false }); err != nil {
		t.Fatal(err)
	}
	if ev := <-got; ev.Type != "hello" {
		t.Fatalf("first event over HTTP: %+v", ev)
	}
}

// openStream opens /v1/events and returns the response once its header is in.
func openStream(t *testing.T, hc *http.Client, base string) *http.Response {
	t.Helper()
	resp, err := hc.Get(base + "/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// Each stream holds a goroutine and a buffer for as long as its reader
// wants: the number of them is capped, per listener.
func TestEventStreamsAreCapped(t *testing.T) {
	u := &fakeUnit{}
	log, _ := newLogRecorder()
	unix, base := startAPI(t, u, log)
	hc := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 100}, Timeout: 10 * time.Second}
	var open []*http.Response
	for i := 0; i < MaxEventStreams; i++ {
		resp := openStream(t, hc, base)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %s", i+1, resp.Status)
		}
		open = append(open, resp)
	}
	resp := openStream(t, hc, base)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "too many event streams") {
		t.Fatalf("stream %d: %s %s, want 503 saying too many event streams", MaxEventStreams+1, resp.Status, body)
	}
	// The socket (roomctl watch) has its own allowance.
	if resp := openStream(t, unix.hc, unix.base); resp.StatusCode != http.StatusOK {
		t.Fatalf("a stream on the unix socket while HTTP is full: %s", resp.Status)
	}
	open[0].Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp := openStream(t, hc, base)
		if resp.StatusCode == http.StatusOK {
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatalf("closing a stream did not free its place: %s", resp.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fallbackPath is $TMPDIR/konsult-<uid>/roomd.sock for TMPDIR=base.
func fallbackPath(base string) string {
	return filepath.Join(base, fmt.Sprintf("konsult-%d", os.Getuid()), "roomd.sock")
}

// The fallback folder has a name anyone can guess: another local user who
// makes it first could swap roomd's socket for theirs.
func TestFallbackSocketFolderMustBeOurs(t *testing.T) {
	t.Setenv("KONSULT_SOCKET", "")
	if _, err := os.Stat("/run/konsult"); err == nil {
		t.Log("/run/konsult exists here; the test calls ListenUnix on the fallback path itself")
	}
	t.Run("missing folder is made 0700", func(t *testing.T) {
		base := t.TempDir()
		t.Setenv("TMPDIR", base)
		l, err := ListenUnix(fallbackPath(base))
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		fi, err := os.Lstat(filepath.Dir(fallbackPath(base)))
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("folder made with %v, %v; want 0700", fi.Mode(), err)
		}
	})
	refused := func(t *testing.T, base, want string) {
		t.Helper()
		dir := filepath.Dir(fallbackPath(base))
		l, err := ListenUnix(fallbackPath(base))
		if err == nil {
			l.Close()
			t.Fatalf("roomd listened in %s", dir)
		}
		if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "rm -r") {
			t.Fatalf("error %q does not name the folder %s, %q and the fix", err, dir, want)
		}
		if _, err := os.Lstat(fallbackPath(base)); err == nil {
			t.Fatalf("a socket was made in %s", dir)
		}
	}
	for _, mode := range []os.FileMode{0o777, 0o770, 0o702, 0o1777} {
		t.Run(fmt.Sprintf("mode %04o", mode), func(t *testing.T) {
			base := t.TempDir()
			t.Setenv("TMPDIR", base)
			dir := filepath.Dir(fallbackPath(base))
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, mode); err != nil {
				t.Fatal(err)
			}
			refused(t, base, "written by group or others")
		})
	}
	t.Run("symlink", func(t *testing.T) {
		base := t.TempDir()
		t.Setenv("TMPDIR", base)
		target := t.TempDir() // even one of ours: the link itself can be swapped
		if err := os.Symlink(target, filepath.Dir(fallbackPath(base))); err != nil {
			t.Fatal(err)
		}
		refused(t, base, "symbolic link")
		if _, err := os.Lstat(filepath.Join(target, "roomd.sock")); err == nil {
			t.Fatal("the socket went where the link points")
		}
	})
	t.Run("another user's folder", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("making a folder owned by another user needs root")
		}
		base := t.TempDir()
		t.Setenv("TMPDIR", base)
		dir := filepath.Dir(fallbackPath(base))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		refused(t, base, "belongs to uid 65534")

		// roomctl must not talk to whatever listens there either.
		l, err := net.Listen("unix", fallbackPath(base))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		got := make(chan struct{}, 1)
		go func() {
			if c, err := l.Accept(); err == nil {
				got <- struct{}{}
				c.Close()
			}
		}()
		var st map[string]any
		err = Dial(fallbackPath(base)).Status(context.Background(), &st)
		if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Fatalf("roomctl status via %s: %v, want a refusal naming the folder", fallbackPath(base), err)
		}
		select {
		case <-got:
			t.Fatal("roomctl connected to a socket in another user's folder")
		case <-time.After(100 * time.Millisecond):
		}
	})
	t.Run("roomctl with no roomd", func(t *testing.T) {
		base := t.TempDir()
		t.Setenv("TMPDIR", base)
		var st map[string]any
		err := Dial(fallbackPath(base)).Status(context.Background(), &st)
		if err == nil || !strings.Contains(err.Error(), "not running") {
			t.Fatalf("roomctl with no folder: %v, want 'roomd is not running'", err)
		}
		if _, err := os.Lstat(filepath.Dir(fallbackPath(base))); err == nil {
			t.Fatal("roomctl made the folder; only roomd should")
		}
	})
}
