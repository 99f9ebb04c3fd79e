package screen_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/screen"
	"github.com/konsult/konsult/media/gate"
)

func get(t *testing.T, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		return resp, line
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// The page and its state are served with a strict CSP and no external URL;
// with a secret, only under it; requests a browser on another site could
// make are refused.
func TestServerRoutes(t *testing.T) {
	g := gate.New()
	u := newFakeUnit(appliance.Status{State: appliance.Idle, Shutter: "closed"}, g)
	secret := screen.NewSecret()
	url := startServer(t, screen.Config{Room: "Room 3", Language: "nb", Unit: u, Secret: secret})
	origin := strings.TrimSuffix(url, "/"+secret+"/")
	if !strings.HasSuffix(url, "/"+secret+"/") {
		t.Fatalf("URL %q does not hold the secret", url)
	}
	resp, body := get(t, url)
	if resp.StatusCode != 200 || !strings.Contains(body, `src="screen.js"`) {
		t.Fatalf("page: %d %q", resp.StatusCode, body)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("headers: CSP %q, X-Frame-Options %q", csp, resp.Header.Get("X-Frame-Options"))
	}
	for _, f := range []string{"", "screen.js", "screen.css"} {
		_, b := get(t, url+f)
		if strings.Contains(b, "http://") || strings.Contains(b, "https://") || strings.Contains(b, "//cdn") {
			t.Errorf("%q names an external URL", "/"+f)
		}
	}
	resp, line := get(t, url+"v1/state")
	if resp.StatusCode != 200 || !strings.HasPrefix(line, "data: {") || !strings.Contains(line, `"lang":"nb"`) {
		t.Fatalf("state: %d %q", resp.StatusCode, line)
	}
	for _, p := range []string{"/", "/v1/state", "/screen.js", "/" + secret, "/" + strings.ToUpper(secret) + "/", "/x" + secret[1:] + "/"} {
		if resp, _ := get(t, origin+p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s without the secret: %d, want 404", p, resp.StatusCode)
		}
	}
	host := strings.TrimPrefix(origin, "http://")
	if resp, _ := get(t, url, "Host", "evil.example:"+host[strings.LastIndexByte(host, ':')+1:]); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("foreign Host: %d, want 421", resp.StatusCode)
	}
	if resp, _ := get(t, url+"v1/state", "Origin", "http://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign Origin: %d, want 403", resp.StatusCode)
	}
	if resp, _ := get(t, url+"v1/state", "Sec-Fetch-Site", "cross-site"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site fetch: %d, want 403", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPost, url+"v1/offer", strings.NewReader(`{"sdp":"v=0"}`))
	req.Header.Set("Content-Type", "text/plain")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain offer: %v %v, want 415", resp, err)
	}
	req, _ = http.NewRequest(http.MethodPost, url+"v1/offer", strings.NewReader(`{"sdp":"v=0"}`))
	req.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("offer to a screen without video: %v %v, want 404", resp, err)
	}
	if _, err := screen.New(screen.Config{Unit: u, Secret: "short"}); err == nil {
		t.Error("a short secret taken")
	}
	if _, err := screen.New(screen.Config{Unit: u, Secret: "0123456789abcdef/../x"}); err == nil {
		t.Error("a secret with a slash taken")
	}
}

type leftMedia struct {
	fakeMedia
	left chan string
}

func (m leftMedia) Left(p string) { m.left <- p }

// A far-end participant the unit reports gone loses their tile at once.
func TestLeaveEventDropsTheTile(t *testing.T) {
	u := newFakeUnit(appliance.Status{State: appliance.InCall}, gate.New())
	m := leftMedia{left: make(chan string, 1)}
	startServer(t, screen.Config{Unit: u, Media: m})
	deadline := time.Now().Add(5 * time.Second)
	for {
		u.publish(appliance.Event{Type: "participant", Detail: "left", Participant: "p-1"})
		select {
		case p := <-m.left:
			if p != "p-1" {
				t.Fatalf("left %q", p)
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the leave event did not reach the display")
		}
	}
}
