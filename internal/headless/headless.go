// Package headless starts Debian's Chromium, headless, on one page, for tests
// that need a real browser but not a conference (internal/farend is the
// LiveKit far end; this is the bare browser, e.g. an attacker's page).
package headless

import (
	"bytes"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// EnvChromium overrides where Chromium is (the same variable internal/farend reads).
	EnvChromium = "KONSULT_CHROMIUM"
	// EnvRequireRealParts makes a missing Chromium fail the test instead of skipping it.
	EnvRequireRealParts = "KONSULT_REQUIRE_REAL_PARTS"
)

// Path returns the Chromium binary, or "".
func Path() string {
	for _, c := range []string{os.Getenv(EnvChromium), "/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser"} {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c
		}
	}
	return ""
}

// Browser is one headless Chromium process (and its helper processes).
type Browser struct {
	cmd  *exec.Cmd
	done chan struct{}
	out  *Tail

	closeOnce sync.Once
}

// Start launches Chromium on url with a fresh profile; extra flags come
// before the URL. It is killed, with every helper process, on t.Cleanup.
func Start(t testing.TB, url string, extra ...string) *Browser {
	t.Helper()
	bin := Path()
	if bin == "" {
		msg := "headless: chromium not found (/usr/bin/chromium or $" + EnvChromium + "); .ci/setup installs it"
		if os.Getenv(EnvRequireRealParts) == "1" {
			t.Fatal(msg + " (" + EnvRequireRealParts + "=1, so this is fatal)")
		}
		t.Skip(msg)
	}
	profile := t.TempDir()
	// The flags of /work/shared/FIELD-NOTES.md "Headless Chromium", minus
	// the media ones: root needs --no-sandbox, and nothing may phone home.
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--no-default-browser-check",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
		"--password-store=basic", "--use-mock-keychain",
		"--disable-background-timer-throttling", "--disable-renderer-backgrounding",
		"--user-data-dir=" + profile,
	}
	args = append(append(args, extra...), url)
	b := &Browser{done: make(chan struct{}), out: NewTail(64 << 10)}
	b.cmd = exec.Command(bin, args...)
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	// Its own process group, so Close can end the renderers and zygotes too.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	BecomeSubreaper()
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("headless: start chromium: %v", err)
	}
	go func() {
		_ = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		b.Close()
		if t.Failed() {
			t.Logf("chromium output (tail):\n%s", b.Output())
		}
	})
	return b
}

// Output is the tail of Chromium's stdout and stderr.
func (b *Browser) Output() string { return b.out.String() }

// Exited is closed once the main Chromium process has ended.
func (b *Browser) Exited() <-chan struct{} { return b.done }

// Close kills Chromium's process group and reaps it. Safe to call twice.
func (b *Browser) Close() {
	b.closeOnce.Do(func() {
		pid := b.cmd.Process.Pid
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(2 * time.Second):
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-b.done
		ReapGroup(pid, 2*time.Second)
	})
}

var subreaperOnce sync.Once

// BecomeSubreaper makes the test process the reaper of Chromium's orphaned
// helpers: PID 1 in a container often reaps nobody, leaving zombies.
func BecomeSubreaper() {
	subreaperOnce.Do(func() {
		const prSetChildSubreaper = 36
		_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	})
}

// ReapGroup waits for (and so reaps) the test's children in process group
// pgid until none is left or the timeout passes.
func ReapGroup(pgid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var ws syscall.WaitStatus
		wpid, err := syscall.Wait4(-pgid, &ws, syscall.WNOHANG, nil)
		switch {
		case err == syscall.EINTR:
		case err != nil: // ECHILD: none left
			return
		case wpid == 0:
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Tail keeps the last max bytes written to it (a browser's output, for a
// failing test's message).
type Tail struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

// NewTail keeps the last max bytes.
func NewTail(max int) *Tail { return &Tail{max: max} }

func (b *Tail) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - b.max; over > 0 {
		b.buf.Next(over)
	}
	return len(p), nil
}

func (b *Tail) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
