package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/internal/syncbuf"
)

// startRoomd runs roomd --sim with args until the test ends and returns its
// "roomd ready" line.
func startRoomd(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	stdout, logs := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	go func() { done <- run(ctx, append([]string{"--sim"}, args...), stdout, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("roomd did not stop")
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "roomd ready") {
		select {
		case err := <-done:
			t.Fatalf("roomd exited before ready: %v\n%s", err, logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("roomd not ready\n%s", logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return stdout.String()
}

// Loopback TCP reaches every local user and every browser on the machine;
// the unix socket only the unit's own user. So the built-in default is the
// socket alone.
func TestDefaultConfigServesNoHTTP(t *testing.T) {
	var c config.Config
	if _, err := config.DecodeStrict(config.Default, &c); err != nil {
		t.Fatal(err)
	}
	if c.API.HTTP != "" {
		t.Fatalf("api.http defaults to %q, want off", c.API.HTTP)
	}
	sock := filepath.Join(t.TempDir(), "roomd.sock")
	ready := startRoomd(t, "--socket", sock)
	if !strings.Contains(ready, "api="+sock+"\n") {
		t.Fatalf("roomd with built-in defaults listens on more than its socket: %q", ready)
	}
}

// With --http, roomd serves the guarded listener: a browser's form POST
// from another site does not join, roomctl --http still works, enrol is
// socket-only.
func TestHTTPWhenAskedForRefusesBrowsers(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "roomd.sock")
	ready := startRoomd(t, "--socket", sock, "--http", "127.0.0.1:0")
	m := regexp.MustCompile(`roomd ready: .*api=\S+ (127\.0\.0\.1:\d+)`).FindStringSubmatch(ready)
	if m == nil {
		t.Fatalf("no loopback address in %q", ready)
	}
	base := "http://" + m[1]
	form, err := http.NewRequest("POST", base+"/v1/action", strings.NewReader("{\"action\":\"join\"}=\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	form.Header.Set("Content-Type", "text/plain")
	form.Header.Set("Origin", "http://127.0.0.1:1")
	resp, err := http.DefaultClient.Do(form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a cross-site form POST: %s, want 403", resp.Status)
	}
	ctx := context.Background()
	unix := localapi.Dial(sock)
	var st status
	if err := unix.Status(ctx, &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "idle" {
		t.Fatalf("after the form POST the unit is %q, want idle", st.State)
	}
	c := localapi.Dial(base)
	if err := c.Action(ctx, "privacy_on"); err != nil {
		t.Fatalf("roomctl --http do privacy_on: %v", err)
	}
	if err := c.Enrol(ctx, "ABCD-EFGH"); err == nil || !strings.Contains(err.Error(), "unix socket") {
		t.Fatalf("roomctl --http enrol: %v, want refused as socket-only", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := unix.Status(ctx, &st); err != nil {
			t.Fatal(err)
		}
		if st.Privacy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("privacy_on over HTTP did not take: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// In --sim the unit's key and the demo fleet's signing key go beside the
// socket: in a fallback folder someone else made first, roomd must refuse
// before it writes anything there.
func TestSimRefusesAFallbackFolderOthersCanWrite(t *testing.T) {
	if _, err := os.Stat("/run/konsult"); err == nil {
		t.Skip("/run/konsult exists: the fallback folder is not used here")
	}
	base := t.TempDir()
	t.Setenv("TMPDIR", base)
	t.Setenv("KONSULT_SOCKET", "")
	dir := filepath.Join(base, fmt.Sprintf("konsult-%d", os.Getuid()))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"--sim"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "written by group or others") {
		t.Fatalf("roomd --sim with a world-writable %s: %v", dir, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("roomd wrote into the refused folder: %v", entries)
	}
}
