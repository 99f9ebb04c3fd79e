package fleetwalk

import (
	"bufio"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/syncbuf"
)

// The command line roomd --sim prints for a newcomer ("try: fleetctl
// --config FILE status") works when copied into a shell as printed: it
// once failed with `unknown command "--config"`. And so do the settings and
// signing key it names: a push signed with that key reaches the unit.
func TestRoomdPrintedCommandLinesWork(t *testing.T) {
	if testing.Short() {
		t.Skip("builds roomd and fleetctl")
	}
	bin := binaries(t, "roomd", "fleetctl")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	roomd := exec.CommandContext(ctx, filepath.Join(bin, "roomd"), "--sim", "--socket", filepath.Join(dir, "roomd.sock"))
	roomd.Dir = dir
	out, err := roomd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	roomd.Stderr = logs
	if err := roomd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = roomd.Wait() }()
	var try, key string
	sc := bufio.NewScanner(out)
	lines := make(chan string, 16)
	go func() {
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(30 * time.Second)
	for try == "" || key == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("roomd --sim ended before printing its fleetctl line")
			}
			if s, found := strings.CutPrefix(strings.TrimSpace(l), "try: "); found {
				try = s
			}
			if _, k, found := strings.Cut(l, "signing key "); found {
				key = strings.TrimSpace(k)
			}
		case <-deadline:
			t.Fatalf("roomd --sim printed no 'try: fleetctl ...' line within 30 s")
		}
	}
	go func() {
		for range lines {
		}
	}()
	env := []string{"PATH=" + bin + ":/usr/bin:/bin"}
	var last string
	for end := time.Now().Add(20 * time.Second); ; {
		got, err := tryShell(dir, env, try)
		if err == nil && strings.Contains(got, "online") {
			last = got
			break
		}
		last = got
		if time.Now().After(end) {
			t.Fatalf("%s (as roomd printed it) did not show the unit online: %v\n%s\nroomd:\n%s", try, err, last, logs.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	settings := strings.Fields(try)[2]
	cfg := filepath.Join(dir, "demo.toml")
	shell(t, dir, nil, "printf '[call]\\nmax_length = \"45m\"\\n' > "+cfg)
	unit := strings.Fields(strings.Split(strings.TrimSpace(last), "\n")[1])[0]
	push := "fleetctl --config " + settings + " push --key " + key + " --device " + unit + " --version 1 --wait 15s " + cfg
	if got, err := tryShell(dir, env, push); err != nil || !strings.Contains(got, "applied") {
		t.Fatalf("%s: %v\n%s", push, err, got)
	}
}
