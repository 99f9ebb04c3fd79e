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

func TestRefusesNonLoopback(t *testing.T) {
	err := run(context.Background(), []string{"--api-key", "k", "--api-secret", "s",
		"--client-js", "../../.cache/npm/node_modules/livekit-client/dist/livekit-client.umd.js", "--listen", "0.0.0.0:8790"}, os.Stdout, os.Stderr)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("err %v: want a refusal naming loopback", err)
	}
}
