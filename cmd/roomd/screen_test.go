package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/screentest"
)

// displayConfig is [display] on a fresh loopback port; extra goes into it.
func displayConfig(extra string) string {
	return "[display]\nenabled = true\nlisten = \"127.0.0.1:0\"\n" + extra + "\n"
}

var displayLine = regexp.MustCompile(`(?m)^display: (http://127\.0\.0\.1:[0-9]+/\S*)(.*)$`)

// displayURL is the address roomd printed on its `display:` line, and the
// rest of that line.
func displayURL(t *testing.T, u *unitUnderTest) (url, rest string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if m := displayLine.FindStringSubmatch(u.stdout.String()); m != nil {
			return m[1], m[2]
		}
		if time.Now().After(deadline) {
			t.Fatalf("roomd printed no display line; stdout:\n%s", u.stdout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func screenText(t *testing.T, sc *screentest.Browser, id, want string, d time.Duration) {
	t.Helper()
	screentest.WaitUntil(t, sc, "#"+id+" = "+want, d, fmt.Sprintf("(document.getElementById(%q) || {}).textContent || ''", id), func(s string) bool { return s == want })
}

// The unit's screen through roomd: roomd --sim on real LiveKit (connector
// "livekit") with [display] on, a headless Chromium opening the URL roomd
// printed. Idle shows the room and "Press JOIN to start"; after JOIN each
// far end's moving picture shows in a tile, the self-view shows the room
// while the camera is out and the placeholder after PRIVACY, the status bar
// says so in words; one far end leaving leaves one tile; a lost camera
// gives the fault screen with its reason.
func TestScreenThroughRoomd(t *testing.T) {
	lk := farend.StartLiveKit(t)
	room := "screen-room"
	u := startUnit(t, connectorConfig("livekit", lk, room, "")+displayConfig(`room_name = "Room 3"`))
	url, _ := displayURL(t, u)
	sc := screentest.Start(t, url, 1280, 720)

	screenText(t, sc, "press", "Press JOIN to start", 10*time.Second)
	screenText(t, sc, "room", "Room 3", time.Second) // display.room_name, not the conference's room
	screentest.SaveShot(t, sc, "idle.png")

	a := farend.StartFarEnd(t, lk, room, "patient", farend.Publish())
	farWait(t, a, "publish", 30*time.Second, func(s farend.FarEndStats) bool { return s.Published })
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	inCall := time.Now()
	screentest.MovingTiles(t, sc, 1, 20*time.Second)
	t.Logf("in call (far end already publishing) → its moving picture on the screen: %s", time.Since(inCall).Round(10*time.Millisecond))

	// A far end that publishes during the call: the figure the issue asks.
	b := farend.StartFarEnd(t, lk, room, "interpreter", farend.Publish())
	farWait(t, b, "second far end publishes", 30*time.Second, func(s farend.FarEndStats) bool { return s.Published })
	published := time.Now()
	two := screentest.MovingTiles(t, sc, 2, 20*time.Second)
	t.Logf("far end publishes → its moving picture on the screen through roomd: %s", time.Since(published).Round(10*time.Millisecond))

	screenText(t, sc, "bar-text", "LIVE: camera and microphone on", 5*time.Second)
	screenText(t, sc, "others", "2 at the far end", 5*time.Second)
	screentest.WaitSelfRoom(t, sc, 10*time.Second)
	screentest.SaveShot(t, sc, "call.png")

	// PRIVACY: the bar says so, the self-view shows the placeholder (on
	// the glass too), the far ends still show.
	pressed := time.Now()
	u.press("privacy")
	screenText(t, sc, "bar-text", "Private: nothing leaves the room", 5*time.Second)
	v := screentest.WaitUntil(t, sc, "the self-view's placeholder", 2*time.Second, screentest.SelfJS, func(v screentest.Self) bool { return v.Closed })
	t.Logf("PRIVACY pressed → placeholder on the screen: within %s (polled, an upper bound)", time.Since(pressed).Round(time.Millisecond))
	if v.Placeholder != "Camera closed" {
		t.Errorf("private self-view %+v, want the words \"Camera closed\"", v)
	}
	time.Sleep(300 * time.Millisecond)
	if std, mean := screentest.SelfGlass(t, sc); std > farend.UniformStdDev || math.Abs(mean-0x3c) > 8 {
		t.Errorf("the glass over the private self-view is not the placeholder: std %.1f mean %.1f", std, mean)
	}
	screentest.MovingTiles(t, sc, 2, 5*time.Second)
	screentest.SaveShot(t, sc, "private.png")

	u.press("privacy")
	screenText(t, sc, "bar-text", "LIVE: camera and microphone on", 10*time.Second)
	screentest.WaitSelfRoom(t, sc, 10*time.Second)

	// One far end leaves: one tile, the other's, remains.
	if err := b.Leave(); err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	rest := screentest.MovingTiles(t, sc, 1, 15*time.Second)
	t.Logf("a far end leaves → one tile: %s", time.Since(left).Round(10*time.Millisecond))
	if rest[0].Participant != two[0].Participant && rest[0].Participant != two[1].Participant {
		t.Errorf("the remaining tile shows %q, not one of %q, %q", rest[0].Participant, two[0].Participant, two[1].Participant)
	}
	screenText(t, sc, "others", "1 at the far end", 5*time.Second)

	// The camera lost mid call: the fault screen names it.
	if err := u.api.Fault(context.Background(), "camera_lost", true); err != nil {
		t.Fatal(err)
	}
	u.waitFor("fault", 10*time.Second, isState(appliance.Fault))
	screenText(t, sc, "fault-title", "The unit has a fault", 5*time.Second)
	var reasons string
	sc.Eval(`document.getElementById('fault-reasons').textContent + ' ' + document.getElementById('todo').textContent`, &reasons)
	if !strings.Contains(strings.ToLower(reasons), "camera") {
		t.Errorf("the fault screen does not name the camera: %q", reasons)
	}
	screentest.SaveShot(t, sc, "fault.png")
}

// With display.url_file the kiosk's URL and its secret go in the file
// (0640), never on stdout, in the log or in roomctl status; the origin
// without the secret is refused, and so are a foreign Host (DNS rebinding)
// and a foreign Origin on roomd's own listener.
func TestDisplayURLFileKeepsTheSecret(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "kiosk", "display.url")
	u := startUnit(t, displayConfig(fmt.Sprintf("url_file = %q", file)))
	origin, rest := displayURL(t, u)
	if !strings.Contains(rest, file) {
		t.Errorf("the display line %q does not say where the kiosk's URL is", origin+rest)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("URL file mode %o, want 640", fi.Mode().Perm())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	full := strings.TrimSpace(string(b))
	if !strings.HasPrefix(full, origin) || len(full) <= len(origin)+8 {
		t.Fatalf("URL file holds %q, want %s followed by the secret", full, origin)
	}
	secret := strings.Trim(strings.TrimPrefix(full, origin), "/")
	for what, s := range map[string]string{"stdout": u.stdout.String(), "log": u.logs.String()} {
		if strings.Contains(s, secret) {
			t.Errorf("the screen's secret is in roomd's %s", what)
		}
	}

	get := func(url string, hdr ...string) int {
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
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get(full); c != http.StatusOK {
		t.Fatalf("the kiosk's URL: %d", c)
	}
	for _, p := range []string{"", "v1/state", "screen.js"} {
		if c := get(origin + p); c != http.StatusNotFound {
			t.Errorf("/%s without the secret: %d, want 404", p, c)
		}
	}
	port := origin[strings.LastIndexByte(strings.TrimSuffix(origin, "/"), ':')+1 : len(origin)-1]
	if c := get(full, "Host", "evil.example:"+port); c != http.StatusMisdirectedRequest {
		t.Errorf("foreign Host (DNS rebinding): %d, want 421", c)
	}
	if c := get(full+"v1/state", "Origin", "http://evil.example"); c != http.StatusForbidden {
		t.Errorf("foreign Origin: %d, want 403", c)
	}
	if c := get(full+"v1/state", "Sec-Fetch-Site", "cross-site"); c == http.StatusOK {
		t.Errorf("a cross-site fetch read the state: %d", c)
	}

	bin := filepath.Join(t.TempDir(), "roomctl")
	if out, err := exec.Command("go", "build", "-o", bin, "../roomctl").CombinedOutput(); err != nil {
		t.Fatalf("build roomctl: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--socket", u.sock, "status").CombinedOutput()
	if err != nil {
		t.Fatalf("roomctl status: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^\s*display\s+` + regexp.QuoteMeta(origin) + `\s*$`).Match(out) {
		t.Errorf("roomctl status has no display row with %s:\n%s", origin, out)
	}
	if strings.Contains(string(out), secret) {
		t.Errorf("roomctl status shows the screen's secret:\n%s", out)
	}

	// Stopping roomd takes the URL away with it.
	if err := u.shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("URL file still there after roomd stopped: %v", err)
	}
}
