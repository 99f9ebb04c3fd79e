package screen_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/screen"
	"github.com/konsult/konsult/internal/screentest"
)

// The kiosk keeps the screen's secret off Chromium's command line (any
// local user reads /proc/PID/cmdline): Chromium opens a private file://
// page that sends it on to the page under the secret, as
// image/rootfs/usr/local/libexec/konsult-kiosk writes it. That navigation
// arrives marked cross-site; the screen must show, and nothing but that
// one navigation may get past the guard.
func TestKioskHandOffFromAPrivateFile(t *testing.T) {
	u := newFakeUnit(appliance.Status{State: appliance.Idle, Shutter: "closed"}, nil)
	secret := screen.NewSecret()
	url := startServer(t, screen.Config{Room: "Room 3", Language: "en", Unit: u, Secret: secret})

	open := filepath.Join(t.TempDir(), "open.html")
	page := fmt.Sprintf(`<!doctype html><meta charset="utf-8"><meta name="referrer" content="no-referrer"><script>location.replace(%q)</script>`+"\n", url)
	if err := os.WriteFile(open, []byte(page), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := screentest.Start(t, "file://"+open, 1280, 720)
	p := screentest.WaitUntil(t, sc, "idle screen after the hand-off", 15*time.Second, pageTextJS, func(p pageText) bool { return p.Class == "state-idle" && p.Room != "" })
	if p.Room != "Room 3" || !strings.Contains(p.Press, "JOIN") {
		t.Errorf("the screen after the kiosk's hand-off: %+v", p)
	}

	nav := []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document"}
	if resp, _ := get(t, url, nav...); resp.StatusCode != http.StatusOK {
		t.Errorf("cross-site top-level navigation to the page: %d, want 200", resp.StatusCode)
	}
	for _, c := range []struct {
		name string
		url  string
		hdr  []string
	}{
		{"the state stream, as a navigation", url + "v1/state", nav},
		{"the script, as a navigation", url + "screen.js", nav},
		{"the page in a frame", url, []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "iframe"}},
		{"the page fetched", url, []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "no-cors", "Sec-Fetch-Dest", "empty"}},
		{"the page with an Origin", url, append([]string{"Origin", "http://evil.example"}, nav...)},
		{"the page with a query", url + "?x=1", nav},
	} {
		if resp, _ := get(t, c.url, c.hdr...); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s, cross-site: %d, want 403", c.name, resp.StatusCode)
		}
	}
	host := strings.TrimPrefix(strings.TrimSuffix(url, "/"+secret+"/"), "http://")
	if resp, _ := get(t, url, append([]string{"Host", "evil.example:" + host[strings.LastIndexByte(host, ':')+1:]}, nav...)...); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("navigation with a foreign Host: %d, want 421", resp.StatusCode)
	}

	// Without a secret there is nothing that only the kiosk knows: no
	// cross-site navigation gets in.
	plain := startServer(t, screen.Config{Room: "Room 3", Unit: u})
	if resp, _ := get(t, plain, nav...); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site navigation to a screen without a secret: %d, want 403", resp.StatusCode)
	}
}
