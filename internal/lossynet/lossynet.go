// Package lossynet runs a test inside a fresh network namespace whose
// loopback drops UDP at random, through nftables (this kernel has no netem).
// Everything the test starts (LiveKit, Chromium, the unit in-process) sees
// only that loopback, so every UDP packet of the call, each hop, is subject
// to the loss; TCP (signalling, the far end's reports) is never dropped.
//
// The test binary re-executes itself under `unshare --net` for the one test
// (it needs root, as CI has), brings lo up there and installs the table. The
// loss can be changed while the test runs: Loss(p) for p % random drop,
// Cut() for a total outage of UDP.
package lossynet

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// envInner marks the re-executed test binary running inside the namespace.
const envInner = "KONSULT_LOSSYNET_INNER"

// envRequire: a missing real part fails instead of skipping.
const envRequire = "KONSULT_REQUIRE_REAL_PARTS"

// Net is the namespace's loopback, as seen from inside it.
type Net struct {
	t    testing.TB
	mu   sync.Mutex
	loss int
}

func missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv(envRequire) == "1" {
		t.Fatalf("lossynet: %s (%s=1, so this is fatal)", what, envRequire)
	}
	t.Skipf("lossynet: %s (set %s=1 to make this fatal)", what, envRequire)
}

// Run runs f inside a fresh network namespace with loss% random UDP loss
// on its loopback. Called in the normal test binary it re-executes that
// binary for just this test and reports the child's result as its own;
// the child, inside the namespace, calls f. Not for parallel tests or
// subtests that call it again.
func Run(t *testing.T, loss int, f func(t *testing.T, n *Net)) {
	t.Helper()
	if os.Getenv(envInner) == t.Name() {
		n := &Net{t: t}
		if err := run("ip", "link", "set", "lo", "up"); err != nil {
			t.Fatalf("lossynet: bring lo up in the namespace: %v", err)
		}
		if err := n.apply(fmt.Sprintf("add table inet lossy\nadd chain inet lossy out { type filter hook output priority 0; policy accept; }\n%s", rule(loss))); err != nil {
			t.Fatalf("lossynet: install the loss table: %v", err)
		}
		n.loss = loss
		t.Cleanup(func() { _ = n.apply("delete table inet lossy\n") })
		f(t, n)
		return
	}
	if os.Geteuid() != 0 {
		missing(t, "needs root for a network namespace and nftables")
	}
	for _, tool := range []string{"unshare", "nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing(t, tool+" not found (nftables comes with .ci/setup)")
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("lossynet: own executable: %v", err)
	}
	args := []string{"--net", "--", exe, "-test.run", "^" + regexp.QuoteMeta(t.Name()) + "$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout", time.Until(d).Round(time.Second).String())
	}
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), envInner+"="+t.Name())
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	began := time.Now()
	err = cmd.Run()
	t.Logf("lossynet: %s ran in a network namespace at %d %% UDP loss (%s)", t.Name(), loss, time.Since(began).Round(time.Second))
	if err != nil {
		t.Fatalf("lossynet: %s failed inside the namespace: %v (its output is above)", t.Name(), err)
	}
}

func rule(loss int) string {
	switch {
	case loss >= 100:
		return "add rule inet lossy out meta l4proto udp drop\n"
	case loss > 0:
		return fmt.Sprintf("add rule inet lossy out meta l4proto udp numgen random mod 100 < %d drop\n", loss)
	}
	return ""
}

// Loss sets random UDP loss to p % (each packet, each hop: a unit→SFU→
// browser packet crosses loopback twice).
func (n *Net) Loss(p int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.apply("flush chain inet lossy out\n" + rule(p)); err != nil {
		n.t.Errorf("lossynet: set loss to %d %%: %v", p, err) // Errorf: CutFor calls this off the test goroutine
	}
	n.loss = p
}

// Cut drops all UDP until the returned restore is called, which puts back
// the loss that was set before.
func (n *Net) Cut() (restore func()) {
	n.mu.Lock()
	before := n.loss
	n.mu.Unlock()
	n.Loss(100)
	return func() { n.Loss(before) }
}

// CutFor drops all UDP for d, in the background, from now; the returned
// channel closes once the loss is back to what it was.
func (n *Net) CutFor(d time.Duration) <-chan struct{} {
	restore := n.Cut()
	done := make(chan struct{})
	go func() {
		time.Sleep(d)
		restore()
		close(done)
	}()
	return done
}

func (n *Net) apply(script string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
