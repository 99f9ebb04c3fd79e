package configstore

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const crashEnv = "KONSULT_CONFIGSTORE_CRASH_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashHelper(dir)
		return
	}
	os.Exit(m.Run())
}

const crashKey = "device:room-12"

// crashState is the state applied as version n. It is big enough (about
// 48 KiB) that a write takes a while, and every part of it names n, so a
// state mixing two writes cannot pass for a real one.
func crashState(n uint64) State {
	pad := strings.Repeat(fmt.Sprintf("# padding for version %d\n", n), 48<<10/32)
	return State{
		Config:    fmt.Sprintf("[conference]\nroom = \"room-%d\"\n%s", n, pad),
		Envelopes: map[string][]byte{crashKey: []byte(fmt.Sprintf(`{"payload":"v%d"}`, n))},
		Versions:  map[string]uint64{crashKey: n},
	}
}

// crashHelper runs in a child process: it applies ever newer configs,
// confirming every other one and saving nonces now and then, and prints
// "applied N" after each Apply returns, until it is killed.
func crashHelper(dir string) {
	s, err := Open(dir)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	fmt.Println("ready")
	for i := 0; ; i++ {
		n := s.Current().Versions[crashKey] + 1
		if err := s.Apply(crashState(n)); err != nil {
			fmt.Println("apply:", err)
			os.Exit(4)
		}
		fmt.Println("applied", n)
		if i%2 == 0 {
			if err := s.Confirm(); err != nil {
				os.Exit(5)
			}
		}
		if i%3 == 0 {
			if err := s.SaveNonces(map[string]time.Time{fmt.Sprintf("%032x", n): time.Unix(int64(n), 0)}); err != nil {
				os.Exit(6)
			}
		}
	}
}

// lines collects a child's output and signals its first line.
type lines struct {
	mu    sync.Mutex
	buf   strings.Builder
	ready chan struct{}
	once  sync.Once
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if strings.Contains(l.buf.String(), "\n") {
		l.once.Do(func() { close(l.ready) })
	}
	return len(p), nil
}

// TestCrashAtAnyInstant kills a process that applies configs in a loop with
// SIGKILL at random moments, over 200 times, and checks after each kill that
// the store opens on a complete state: the last one the child reported
// applied, or the one it was writing.
func TestCrashAtAnyInstant(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns 200+ processes")
	}
	kills := 200
	dir := filepath.Join(t.TempDir(), "fleet")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var onDisk uint64 // version the store held before the child started
	var tornSeen, newSeen, pendingSeen int
	deadline := time.Now().Add(40 * time.Second)
	for i := 0; i < kills; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("only %d kills in 40s", i)
		}
		out := &lines{ready: make(chan struct{})}
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		cmd.Stdout = out
		cmd.Stderr = out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Mostly kill inside the apply loop; one time in ten, during start-up
		// (Open itself writes when a config is pending).
		if rng.IntN(10) == 0 {
			time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
		} else {
			select {
			case <-out.ready:
			case <-time.After(10 * time.Second):
				t.Fatal("child did not start")
			}
			time.Sleep(time.Duration(rng.IntN(8000)) * time.Microsecond)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("kill %d: child ended by itself (%v): %s", i, err, out.buf.String())
		}

		reported := onDisk
		sc := bufio.NewScanner(strings.NewReader(out.buf.String()))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "applied "); ok {
				reported, _ = strconv.ParseUint(v, 10, 64)
			}
		}

		s, err := Open(dir)
		if err != nil {
			t.Fatalf("kill %d: Open after kill: %v", i, err)
		}
		cur := s.Current()
		n := cur.Versions[crashKey]
		if n != reported && n != reported+1 {
			t.Fatalf("kill %d: store holds version %d, child had reported %d applied", i, n, reported)
		}
		if n > 0 && !reflect.DeepEqual(cur, crashState(n)) {
			t.Fatalf("kill %d: current state is not the complete version %d", i, n)
		}
		if lkg, ok := s.LastKnownGood(); ok {
			m := lkg.Versions[crashKey]
			if m >= n || (m > 0 && !reflect.DeepEqual(lkg, crashState(m))) {
				t.Fatalf("kill %d: last known good is version %d (complete: %v), current %d", i, m, reflect.DeepEqual(lkg, crashState(m)), n)
			}
		}
		st := s.Startup()
		if st.TornWrites > 0 {
			tornSeen++
		}
		if st.Pending != nil {
			pendingSeen++
		}
		if n == reported+1 && n != onDisk {
			newSeen++
		}
		if m, _ := filepath.Glob(filepath.Join(dir, "state.tmp-*")); len(m) != 0 {
			t.Fatalf("kill %d: temp files left after Open: %v", i, m)
		}
		onDisk = n
		s.Close()
	}
	checkModes(t, dir)
	t.Logf("%d kills: %d left a torn write, %d came up on a config applied but not yet reported, %d came up pending; reached version %d",
		kills, tornSeen, newSeen, pendingSeen, onDisk)
	if tornSeen == 0 {
		t.Error("no kill landed inside a write: the test did not exercise what it claims")
	}
}
