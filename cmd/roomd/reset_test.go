package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/unit"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/fleet"
)

// TestFactoryResetInEveryConfiguration (issue 14, finding 5): a factory
// reset, from the API (roomctl factory-reset --yes) or from the buttons
// (PRIVACY and JOIN held), wipes the unit and starts roomd again as a new
// unit whatever the fleet is doing. It used to be ignored with the fleet
// off and once the fleet agent had stopped: the API answered 202 "wiping"
// and nothing happened.
func TestFactoryResetInEveryConfiguration(t *testing.T) {
	const hold = "[buttons]\nfactory_reset_hold = \"3s\"\n"
	for _, how := range []string{"api", "buttons"} {
		t.Run("fleet off/"+how, func(t *testing.T) {
			dir := t.TempDir()
			seeded := seedState(t, dir)
			u := startUnit(t, hold+"[fleet]\nenabled = false\n"+dirs(dir))
			factoryReset(t, u, how)
			u.wipedAndNew(t, dir, seeded)
		})
		t.Run("fleet agent stopped/"+how, func(t *testing.T) {
			f := newFleetSide(t)
			dir := t.TempDir()
			seeded := seedState(t, dir)
			// The agent's message queue cannot be opened (a file where its
			// folder goes): the agent stops, the unit runs on without it.
			if err := os.WriteFile(filepath.Join(dir, "state", "link"), []byte("not a folder"), 0o600); err != nil {
				t.Fatal(err)
			}
			u := startUnit(t, f.unitConfig(filepath.Join(dir, "state"))+"identity_dir = "+quote(filepath.Join(dir, "identity"))+"\n"+hold)
			u.logged(t, "fleet agent stopped", 1)
			factoryReset(t, u, how)
			u.wipedAndNew(t, dir, seeded)
		})
	}
	t.Run("fleet on/api", func(t *testing.T) {
		f := newFleetSide(t)
		dir := t.TempDir()
		seeded := seedState(t, dir)
		u := startUnit(t, f.unitConfig(filepath.Join(dir, "state"))+"identity_dir = "+quote(filepath.Join(dir, "identity"))+"\n"+hold)
		f.WaitEvent(fleet.EventStarted, 10*time.Second)
		factoryReset(t, u, "api")
		u.wipedAndNew(t, dir, seeded)
		f.WaitEvent(fleet.EventStarted, 20*time.Second) // the new unit is back on its fleet
	})
	t.Run("enrolling/api", func(t *testing.T) {
		f := newEnrolFleet(t)
		dir := t.TempDir()
		seeded := seedState(t, dir)
		u := startUnit(t, f.unitConfig(dir, ""))
		s := u.within(20*time.Second, "waiting for a claim code", func(s status) bool { return enrolment(s).Phase == enrol.PhaseNeedCode })
		id := s.Fleet.Enrolment.Device
		factoryReset(t, u, "api")
		u.wipedAndNew(t, dir, seeded)
		u.within(20*time.Second, "a new unit with a new key", func(s status) bool {
			return enrolment(s).Phase == enrol.PhaseNeedCode && s.Fleet.Enrolment.Device != "" && s.Fleet.Enrolment.Device != id
		})
	})
}

func dirs(dir string) string {
	return "identity_dir = " + quote(filepath.Join(dir, "identity")) + "\nstate_dir = " + quote(filepath.Join(dir, "state")) + "\n"
}

// seedState leaves a file in the identity and state folders, as an earlier
// owner's fleet would have: a factory reset must remove both.
func seedState(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, d := range []string{"identity", "state"} {
		p := filepath.Join(dir, d, "left-by-the-previous-owner")
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func factoryReset(t *testing.T, u *unitUnderTest, how string) {
	t.Helper()
	ctx := context.Background()
	if how == "api" {
		if err := u.api.FactoryReset(ctx, true); err != nil {
			t.Fatalf("roomctl factory-reset --yes: %v", err)
		}
		return
	}
	var wg sync.WaitGroup
	for _, b := range appliance.ResetButtons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = u.api.Press(ctx, b, 4000)
		}()
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
}

// logged waits until roomd's log holds line at least n times.
func (u *unitUnderTest) logged(t *testing.T, line string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(u.logs.String(), line) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%q not logged %d times within 20s; roomd log:\n%s", line, n, tail(u.logs.String(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wipedAndNew checks what a user sees after a factory reset: roomd logged
// the wipe and started again (its API answers), the earlier owner's files
// are gone, and the request to wipe the logs is there for
// konsult-reset.service.
func (u *unitUnderTest) wipedAndNew(t *testing.T, dir string, seeded []string) {
	t.Helper()
	u.logged(t, "factory reset: wiped", 1)
	u.logged(t, "msg=ready", 2)
	u.within(10*time.Second, "the new unit's API", func(status) bool { return true })
	for _, p := range seeded {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived the factory reset (%v)", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, unit.ResetMarker)); err != nil {
		t.Errorf("no request to wipe the logs: %v", err)
	}
}

// Under systemd (the image's boot test runs roomd --sim as a service) a
// factory reset ends roomd with errFactoryReset, for systemd to start it
// again (exit 75), instead of starting over in-process: roomd has told
// systemd STOPPING=1, and systemd would kill the carried-on process.
func TestSimFactoryResetUnderSystemdExits(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		buf := make([]byte, 256)
		for {
			if _, _, err := l.ReadFromUnix(buf); err != nil {
				return
			}
		}
	}()
	t.Setenv("NOTIFY_SOCKET", sock)
	dir := t.TempDir()
	u := startUnit(t, "[fleet]\nenabled = false\n"+dirs(dir))
	factoryReset(t, u, "api")
	select {
	case err := <-u.done:
		u.done <- err
		if !errors.Is(err, errFactoryReset) {
			t.Fatalf("roomd ended with %v, want the factory reset (exit 75)", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("roomd did not exit for systemd to restart it; log:\n%s", tail(u.logs.String(), 20))
	}
	if _, err := os.Stat(filepath.Join(dir, unit.ResetMarker)); err != nil {
		t.Errorf("no request to wipe the logs: %v", err)
	}
}
