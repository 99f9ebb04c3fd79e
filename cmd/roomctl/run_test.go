package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/syncbuf"
)

// startRoomd builds and starts a real `roomd --sim` (with extra flags)
// and returns its socket.
func startRoomd(t *testing.T, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "roomd")
	if out, err := exec.Command("go", "build", "-o", bin, "../roomd").CombinedOutput(); err != nil {
		t.Fatalf("build roomd: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "roomd.sock")
	cmd := exec.Command(bin, append([]string{"--sim", "--socket", sock, "--http", "off"}, extra...)...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("roomd did not create its socket\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func roomctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestPressStatusDoctor(t *testing.T) {
	sock := startRoomd(t)
	if out, err := roomctl(t, "--socket", sock, "press", "join"); err != nil {
		t.Fatalf("press join: %v\n%s", err, out)
	}
	var out string
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out, "in_call") {
		if time.Now().After(deadline) {
			t.Fatalf("never in call:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
		var err error
		if out, err = roomctl(t, "--socket", sock, "status"); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"camera out   YES", "mic out      YES", "LED          live", "shutter      open", "GPIO17"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	doc, err := roomctl(t, "--socket", sock, "doctor")
	if err != nil {
		t.Fatalf("doctor on a healthy simulated unit failed: %v\n%s", err, doc)
	}
	if !strings.Contains(doc, "ok    button join") {
		t.Errorf("doctor output:\n%s", doc)
	}

	// A stuck closed sensor shows up in doctor with the pin and a fix.
	if _, err := roomctl(t, "--socket", sock, "fault", "sensor_disagree", "on"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	doc, err = roomctl(t, "--socket", sock, "doctor")
	if err == nil || !strings.Contains(doc, "FAIL") || !strings.Contains(doc, "GPIO6 (header pin 31)") || !strings.Contains(doc, "fix:") {
		t.Errorf("doctor did not name the faulty sensor and a fix (err %v):\n%s", err, doc)
	}
}

func TestErrorsAreClear(t *testing.T) {
	sock := startRoomd(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "status"}, "roomd is not running"},
		{[]string{"--socket", sock, "press", "hangup"}, `no button "hangup"`},
		{[]string{"--socket", sock, "fault", "gremlins", "on"}, "stuck_shutter"},
		{[]string{"--socket", sock, "do", "dance"}, "unknown action"},
		{[]string{"--socket", sock, "hold", "join", "forever"}, "not a duration"},
		{[]string{"--socket", sock, "frobnicate"}, "unknown command"},
	}
	for _, c := range cases {
		out, err := roomctl(t, c.args...)
		if err == nil {
			t.Errorf("%v: no error\n%s", c.args, out)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %q does not say %q", c.args, err, c.want)
		}
	}
}

func TestWatchShowsStateChanges(t *testing.T) {
	sock := startRoomd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var buf syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--socket", sock, "watch"}, &buf, &buf) }()
	time.Sleep(200 * time.Millisecond)
	if _, err := roomctl(t, "--socket", sock, "press", "join"); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(buf.String(), "in_call") {
		select {
		case <-ctx.Done():
			t.Fatalf("watch never showed in_call:\n%s", buf.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	for _, want := range []string{"hello", "joining", "shutter", "opened", "camera=YES"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("watch output lacks %q:\n%s", want, buf.String())
		}
	}
	cancel()
	<-done
}

// roomctl watch says per call whether it was end-to-end encrypted.
func TestWatchSaysE2EE(t *testing.T) {
	on, off := true, false
	if s := formatEvent(appliance.Event{Type: "call", Detail: "joined", Meeting: "m-1", E2EE: &on}); !strings.Contains(s, "meeting=m-1 e2ee=true") {
		t.Errorf("an end-to-end call: %q", s)
	}
	if s := formatEvent(appliance.Event{Type: "call", Detail: "left", Meeting: "m-2", E2EE: &off}); !strings.Contains(s, "e2ee=false") {
		t.Errorf("a hop-by-hop call: %q", s)
	}
	if s := formatEvent(appliance.Event{Type: "state", State: appliance.Idle}); strings.Contains(s, "e2ee") {
		t.Errorf("a state event: %q", s)
	}
}
