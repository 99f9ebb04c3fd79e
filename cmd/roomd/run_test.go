package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/internal/syncbuf"
)

// unitUnderTest is roomd --sim running in this process, driven only through
// its local API, as roomctl would.
type unitUnderTest struct {
	t      testing.TB
	api    *localapi.Client
	events chan appliance.Event
	done   chan error
	stop   context.CancelFunc
	logs   *syncbuf.Buffer
	stdout *syncbuf.Buffer // what roomd printed
	sock   string
}

func startUnit(t testing.TB, configTOML string) *unitUnderTest {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "roomd.sock")
	args := []string{"--sim", "--socket", sock, "--http", "off"}
	if configTOML != "" {
		p := filepath.Join(dir, "roomd.toml")
		if err := os.WriteFile(p, []byte(configTOML), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	u := &unitUnderTest{t: t, done: make(chan error, 1), stop: cancel, logs: &syncbuf.Buffer{}, events: make(chan appliance.Event, 1024)}
	stdout := &syncbuf.Buffer{}
	u.stdout, u.sock = stdout, sock
	go func() { u.done <- run(ctx, args, stdout, u.logs) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(stdout.String(), "roomd ready") {
		select {
		case err := <-u.done:
			t.Fatalf("roomd exited before ready: %v\n%s", err, u.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("roomd not ready after 5s\n%s", u.logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	u.api = localapi.Dial(sock)
	evCtx, evCancel := context.WithCancel(context.Background())
	subscribed := make(chan struct{})
	go func() {
		_ = u.api.Events(evCtx, func(ev appliance.Event) bool {
			select {
			case <-subscribed:
			default:
				close(subscribed)
			}
			u.events <- ev
			return true
		})
	}()
	select { // the stream is live once its hello arrives
	case <-subscribed:
	case <-time.After(3 * time.Second):
		t.Fatal("event stream did not start")
	}
	t.Cleanup(func() {
		evCancel()
		u.shutdown()
		if t.Failed() {
			t.Logf("roomd log tail:\n%s", tail(u.logs.String(), 40))
		}
	})
	return u
}

func (u *unitUnderTest) shutdown() error {
	u.stop()
	select {
	case err := <-u.done:
		u.done <- err
		return err
	case <-time.After(10 * time.Second):
		u.t.Fatal("roomd did not stop within 10s of shutdown")
		return nil
	}
}

// waitFor collects events until match returns true.
func (u *unitUnderTest) waitFor(what string, timeout time.Duration, match func(appliance.Event) bool) []appliance.Event {
	u.t.Helper()
	var seen []appliance.Event
	deadline := time.After(timeout)
	for {
		select {
		case ev := <-u.events:
			seen = append(seen, ev)
			if match(ev) {
				return seen
			}
		case <-deadline:
			if os.Getenv("KONSULT_DUMP") != "" {
				_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
			}
			u.t.Fatalf("no %s within %s; events: %s\nroomd log tail:\n%s", what, timeout, describe(seen), tail(u.logs.String(), 25))
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func describe(evs []appliance.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  #%d %s %s", e.Seq, e.Type, eventWhat(e))
	}
	return b.String()
}

func eventWhat(e appliance.Event) string {
	switch {
	case e.State != "":
		return string(e.State)
	case e.Gate != nil:
		return fmt.Sprintf("video=%v audio=%v", e.Gate.Video, e.Gate.Audio)
	case e.LED != "":
		return e.LED
	}
	return e.Detail + " " + e.Reason
}

func isState(s appliance.State) func(appliance.Event) bool {
	return func(e appliance.Event) bool { return e.Type == "state" && e.State == s }
}

func indexOf(evs []appliance.Event, match func(appliance.Event) bool) int {
	for i, e := range evs {
		if match(e) {
			return i
		}
	}
	return -1
}

func (u *unitUnderTest) status() status {
	u.t.Helper()
	var s status
	if err := u.api.Status(context.Background(), &s); err != nil {
		u.t.Fatal(err)
	}
	return s
}

// eventually polls the status until ok or 5s pass.
func (u *unitUnderTest) eventually(what string, ok func(status) bool) {
	u.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := u.status()
		if ok(s) {
			return
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("%s: not within 5s; status %+v", what, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (u *unitUnderTest) press(button string) {
	u.t.Helper()
	if err := u.api.Press(context.Background(), button, 60); err != nil {
		u.t.Fatal(err)
	}
}

func TestJoinGoesLiveOnlyAfterShutterConfirmedOpen(t *testing.T) {
	u := startUnit(t, "")
	u.press("join")
	evs := u.waitFor("in_call", 5*time.Second, isState(appliance.InCall))

	opened := indexOf(evs, func(e appliance.Event) bool { return e.Type == "shutter" && e.Detail == "opened" })
	live := indexOf(evs, func(e appliance.Event) bool { return e.Type == "led" && e.LED == "live" })
	videoOut := indexOf(evs, func(e appliance.Event) bool { return e.Type == "gate" && e.Gate.Video })
	if opened < 0 || live < 0 || videoOut < 0 {
		t.Fatalf("missing opened/live/video events: %s", describe(evs))
	}
	if live < opened || videoOut < opened {
		t.Fatalf("LED live or video out before the shutter was confirmed open: %s", describe(evs))
	}
	for _, e := range evs[:opened] {
		if e.Type == "led" && e.LED == "live" {
			t.Fatalf("LED showed live during joining: %s", describe(evs))
		}
	}
	s := u.status()
	if s.State != appliance.InCall || s.LED != "live" || !s.Gate.Video || !s.Gate.Audio {
		t.Fatalf("status after join: %+v", s.Status)
	}
	if s.Sim.Shutter.Position != "open" {
		t.Fatalf("unit says in call but the simulated shutter is %q", s.Sim.Shutter.Position)
	}
	time.Sleep(300 * time.Millisecond)
	if m := u.status().Sim.Media; m.VideoFrames == 0 || m.AudioChunks == 0 {
		t.Fatalf("in call but nothing reached the sink: %+v", m)
	}
}

func TestPrivacyShutsGateBeforeShutterMoves(t *testing.T) {
	u := startUnit(t, "")
	u.press("join")
	u.waitFor("in_call", 5*time.Second, isState(appliance.InCall))

	u.press("privacy")
	evs := u.waitFor("shutter closed", 5*time.Second, func(e appliance.Event) bool { return e.Type == "shutter" && e.Detail == "closed" })
	shut := indexOf(evs, func(e appliance.Event) bool { return e.Type == "gate" && !e.Gate.Video && !e.Gate.Audio })
	closing := indexOf(evs, func(e appliance.Event) bool { return e.Type == "shutter" && e.Detail == "closing" })
	if shut < 0 || closing < 0 || shut > closing {
		t.Fatalf("want the gate shut before the shutter starts closing: %s", describe(evs))
	}
	before := u.status().Sim.Media
	time.Sleep(300 * time.Millisecond)
	s := u.status()
	if s.Sim.Media.VideoFrames != before.VideoFrames || s.Sim.Media.AudioChunks != before.AudioChunks {
		t.Fatalf("media kept flowing in privacy: %+v then %+v", before, s.Sim.Media)
	}
	if !s.Sim.Media.LastIsSlate {
		t.Fatal("the last picture sent before privacy is not the slate")
	}
	if s.State != appliance.InCall || s.LED != "in_call_private" || s.Sim.Shutter.Position != "closed" {
		t.Fatalf("privacy: state %s LED %s shutter %s", s.State, s.LED, s.Sim.Shutter.Position)
	}

	u.press("privacy") // and back: video returns once the shutter confirms open
	evs = u.waitFor("video back", 5*time.Second, func(e appliance.Event) bool { return e.Type == "gate" && e.Gate.Video })
	if indexOf(evs, func(e appliance.Event) bool { return e.Type == "shutter" && e.Detail == "opened" }) < 0 {
		t.Fatalf("video returned without the shutter confirming open: %s", describe(evs))
	}
}

func TestLeaveClosesAndGoesIdle(t *testing.T) {
	u := startUnit(t, "")
	u.press("join")
	u.waitFor("in_call", 5*time.Second, isState(appliance.InCall))
	u.press("leave")
	u.waitFor("idle", 5*time.Second, isState(appliance.Idle))
	s := u.status()
	if s.Gate.Video || s.Gate.Audio || s.LED != "off" || s.Sim.Shutter.Position != "closed" || s.Sim.Media.InCall {
		t.Fatalf("after leave: %+v sim %+v", s.Status, s.Sim)
	}
}

func TestShutterFaultMidCallLeavesAndRecovers(t *testing.T) {
	u := startUnit(t, "")
	u.press("join")
	u.waitFor("in_call", 5*time.Second, isState(appliance.InCall))
	if err := u.api.Fault(context.Background(), "shutter_drift", true); err != nil {
		t.Fatal(err)
	}
	if err := u.api.Fault(context.Background(), "sensor_disagree", true); err != nil {
		t.Fatal(err)
	}
	evs := u.waitFor("fault LED", 5*time.Second, func(e appliance.Event) bool { return e.Type == "led" && e.LED == "fault" })
	if indexOf(evs, func(e appliance.Event) bool { return e.Type == "fault" && e.Detail == "shutter" }) < 0 {
		t.Fatalf("no shutter fault event: %s", describe(evs))
	}
	s := u.status()
	if s.Gate.Video || s.Gate.Audio || len(s.Faults) == 0 {
		t.Fatalf("fault mid-call: gate %+v faults %v", s.Gate, s.Faults)
	}
	u.eventually("the call is left", func(s status) bool { return !s.Sim.Media.InCall })
	_ = u.api.Fault(context.Background(), "sensor_disagree", false)
	_ = u.api.Fault(context.Background(), "shutter_drift", false)
	u.waitFor("recovery to idle", 5*time.Second, isState(appliance.Idle))
	if s := u.status(); s.LED != "off" || len(s.Faults) != 0 {
		t.Fatalf("after recovery: LED %s faults %v", s.LED, s.Faults)
	}
	u.press("join") // and it can join again
	u.waitFor("in_call again", 5*time.Second, isState(appliance.InCall))
}

func TestBouncingJoinButtonIsOnePress(t *testing.T) {
	u := startUnit(t, "")
	if err := u.api.Fault(context.Background(), "bouncy_buttons", true); err != nil {
		t.Fatal(err)
	}
	u.press("join")
	u.waitFor("in_call", 5*time.Second, isState(appliance.InCall))
	time.Sleep(200 * time.Millisecond)
	if s := u.status(); s.State != appliance.InCall {
		t.Fatalf("a bouncing press toggled the call again: state %s", s.State)
	}
}

func TestJoinFailureShowsFaultAndCanRetry(t *testing.T) {
	u := startUnit(t, "")
	_ = u.api.Fault(context.Background(), "join_fails", true)
	u.press("join")
	evs := u.waitFor("fault", 5*time.Second, isState(appliance.Fault))
	if indexOf(evs, func(e appliance.Event) bool { return e.Type == "shutter" && e.Detail == "closed" }) < 0 {
		t.Fatalf("fault state without the shutter confirmed closed: %s", describe(evs))
	}
	s := u.status()
	if s.LED != "fault" || !strings.Contains(s.LastError, "401") || s.Gate.Live() {
		t.Fatalf("join failure: %+v", s.Status)
	}
	u.press("join")
	u.waitFor("in_call", 5*time.Second, isState(appliance.InCall))
}

func TestMaximumCallLength(t *testing.T) {
	u := startUnit(t, "[call]\nmax_length = \"1s\"\n")
	u.press("join")
	u.waitFor("in_call", 5*time.Second, isState(appliance.InCall))
	evs := u.waitFor("idle after the maximum length", 5*time.Second, isState(appliance.Idle))
	if indexOf(evs, func(e appliance.Event) bool {
		return e.Type == "call" && strings.Contains(e.Reason, "maximum call length")
	}) < 0 {
		t.Fatalf("no event says why the call ended: %s", describe(evs))
	}
	if s := u.status(); s.LED != "off" || s.Sim.Shutter.Position != "closed" || s.LastError != "" {
		t.Fatalf("after max length: LED %s shutter %s error %q", s.LED, s.Sim.Shutter.Position, s.LastError)
	}
}

func TestBadConfigRefusesToStart(t *testing.T) {
	cases := []struct {
		name, config, want string
	}{
		{"unknown key", "[unit]\nbord = \"pi4\"\n", "unknown key unit.bord"},
		{"unknown pin", "[pins]\njoin = \"GPIO99\"\n", `"GPIO99" for role join not found`},
		{"pin used twice", "[pins]\nmute = \"GPIO17\"\n", "GPIO17"},
		{"unknown role", "[pins]\nhangup = \"GPIO26\"\n", "hangup"},
		{"missing sensor", "[pins]\nshutter_closed = \"\"\n", "shutter.require_sensors"},
		{"bad duration", "[buttons]\ndebounce = \"fast\"\n", "not a duration"},
		{"out of range", "[buttons]\ndebounce = \"5s\"\n", "buttons.debounce"},
		{"generic without pins", "[unit]\nboard = \"generic\"\n", "has no pin"},
		{"http not loopback", "[api]\nhttp = \"0.0.0.0:8787\"\n", "not a loopback"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "roomd.toml")
			if err := os.WriteFile(p, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"--sim", "--config", p, "--socket", filepath.Join(dir, "s")}
			if tc.name != "http not loopback" {
				args = append(args, "--http", "off")
			}
			var out, errOut bytes.Buffer
			err := run(context.Background(), args, &out, &errOut)
			if err == nil {
				t.Fatal("roomd started with a bad config")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
}

// TestSIGTERMClosesShutter runs the real binary, puts it in a call, sends
// SIGTERM and checks it closed the shutter and switched the LED off on its
// way out.
func TestSIGTERMClosesShutter(t *testing.T) {
	if testing.Short() {
		t.Skip("builds roomd")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "roomd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build roomd: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "roomd.sock")
	cmd := exec.Command(bin, "--sim", "--socket", sock, "--http", "off")
	logs := &syncbuf.Buffer{}
	cmd.Stderr = logs
	cmd.Stdout = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	api := localapi.Dial(sock)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "roomd ready") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := api.Press(context.Background(), "join", 60); err != nil {
		t.Fatal(err)
	}
	for {
		var s status
		if err := api.Status(context.Background(), &s); err != nil {
			t.Fatal(err)
		}
		if s.State == appliance.InCall && s.Sim.Shutter.Position == "open" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not in call: %+v", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("roomd exited with %v after SIGTERM\n%s", err, logs)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("roomd still running 10s after SIGTERM\n%s", logs)
	}
	last := logs.String()
	i := strings.LastIndex(last, "msg=stopped")
	if i < 0 {
		t.Fatalf("no stopped line\n%s", last)
	}
	line := last[i:]
	for _, want := range []string{"shutter=closed", "led=off", "gate_video=false", "gate_audio=false", "sim_shutter=closed", "sim_actuator=Low"} {
		if !strings.Contains(line, want) {
			t.Errorf("on exit: want %s in %q", want, strings.TrimSpace(strings.SplitN(line, "\n", 2)[0]))
		}
	}
}
