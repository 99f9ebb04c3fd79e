package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/screentest"
	"github.com/konsult/konsult/internal/syncbuf"
)

// The page `make run` prints really joins the room: headless Chromium opens
// it, and LiveKit lists a patient in the room.
func TestPageJoinsTheRoom(t *testing.T) {
	lk := farend.StartLiveKit(t)
	chromium := os.Getenv(farend.EnvChromium)
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv(farend.EnvRequireRealParts) == "1" {
			t.Fatalf("chromium missing: %v", err)
		}
		t.Skipf("chromium missing: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--livekit", lk.URL, "--room", "demo-test", "--api-key", lk.APIKey, "--api-secret", lk.APISecret,
			"--client-js", "../../.cache/npm/node_modules/livekit-client/dist/livekit-client.umd.js", "--listen", "127.0.0.1:0"}, out, out)
	}()
	re := regexp.MustCompile(`http://127\.0\.0\.1:\d+/`)
	var url string
	for deadline := time.Now().Add(5 * time.Second); url == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		url = re.FindString(out.String())
	}
	if url == "" {
		t.Fatalf("no page address printed:\n%s", out.String())
	}

	cmd := exec.Command(chromium, append(farend.ChromiumArgs(filepath.Join(t.TempDir(), "profile")), url+"?autojoin=1")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()

	deadline := time.Now().Add(20 * time.Second)
	for {
		ps, err := lk.Participants(context.Background(), "demo-test")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if strings.HasPrefix(p, "patient-") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no patient in the room 20s after opening the page; participants %v", ps)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startPage serves the patient page for room on lk and returns its URL.
func startPage(t *testing.T, lk *farend.LiveKit, room string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--livekit", lk.URL, "--room", room, "--api-key", lk.APIKey, "--api-secret", lk.APISecret,
			"--client-js", "../../.cache/npm/node_modules/livekit-client/dist/livekit-client.umd.js", "--listen", "127.0.0.1:0"}, out, out)
	}()
	t.Cleanup(func() { cancel(); <-done })
	re := regexp.MustCompile(`http://127\.0\.0\.1:\d+/`)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if url := re.FindString(out.String()); url != "" {
			return url
		}
	}
	t.Fatalf("no page address printed:\n%s", out.String())
	return ""
}

// The patient page is the other side of the two-way call: it says what
// happens to the person's picture and sound before it asks, publishes
// their camera and microphone (Chromium's fake devices and consent), and
// its status line stays true once the unit's tracks arrive, even when the
// unit was in the room first (its tracks come before connect returns).
func TestPagePublishesAndSaysWhatItReceives(t *testing.T) {
	lk := farend.StartLiveKit(t)
	room := "demo-two-way"
	// The room unit's stand-in: it publishes, and measures the first
	// remote tracks it gets, the patient's.
	unit := farend.StartFarEnd(t, lk, room, "room-unit", farend.Publish())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := unit.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.Published }); err != nil {
		t.Fatalf("the unit's stand-in did not publish: %v", err)
	}
	url := startPage(t, lk, room)
	sc := screentest.Start(t, url, 1280, 720,
		"--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
		"--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns")
	consent := screentest.WaitUntil(t, sc, "the consent sentence", 10*time.Second, `(document.getElementById('consent') || {}).textContent || ''`, func(s string) bool { return s != "" })
	for _, want := range []string{"camera and microphone", "only", "nothing is recorded"} {
		if !strings.Contains(strings.Join(strings.Fields(consent), " "), want) {
			t.Errorf("the page does not say %q before it asks: %q", want, consent)
		}
	}
	screentest.WaitUntil(t, sc, "the page loaded", 10*time.Second, `document.readyState`, func(s string) bool { return s == "complete" })
	sc.Eval(`document.getElementById('join').click(), true`, nil)
	const statusJS = `document.getElementById('status').textContent`
	st := screentest.WaitUntil(t, sc, "sending and receiving the unit", 20*time.Second, statusJS, func(s string) bool {
		return strings.Contains(s, "sending your camera and microphone") && strings.Contains(s, "receiving room-unit")
	})
	if strings.Contains(st, "waiting") {
		t.Errorf("status %q says waiting while it shows the unit", st)
	}
	s, err := unit.WaitFor(ctx, func(s farend.FarEndStats) bool {
		return s.VideoFramesDecoded > 30 && !s.LastFrameIsUniform && s.AudioEnergyPeak > 0.01
	})
	if err != nil {
		t.Fatalf("the unit's side got no picture and sound from the patient: %v; %+v", err, unit.Stats())
	}
	t.Logf("the unit's side decodes the patient: %d frames, %dx%d, audio peak %.3f; patient status %q", s.VideoFramesDecoded, s.FrameWidth, s.FrameHeight, s.AudioEnergyPeak, st)
	time.Sleep(time.Second)
	var later string
	sc.Eval(statusJS, &later)
	if later != st {
		t.Errorf("status changed while nothing did: %q, then %q", st, later)
	}

	if err := unit.Leave(); err != nil {
		t.Fatal(err)
	}
	screentest.WaitUntil(t, sc, "the unit gone", 15*time.Second, statusJS, func(s string) bool {
		return strings.Contains(s, "room-unit left the room") && strings.Contains(s, "waiting for the room unit") && !strings.Contains(s, "receiving")
	})
}

func TestRefusesNonLoopback(t *testing.T) {
	err := run(context.Background(), []string{"--api-key", "k", "--api-secret", "s",
		"--client-js", "../../.cache/npm/node_modules/livekit-client/dist/livekit-client.umd.js", "--listen", "0.0.0.0:8790"}, os.Stdout, os.Stderr)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("err %v: want a refusal naming loopback", err)
	}
}
