package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/appliance/config"
)

// localConfig is the unit's own config from the TOML text, over the
// built-in defaults.
func localConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "roomd.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := config.ReadLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.Effective(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// applyRecorder is a unit that only records the configs handed to it.
type applyRecorder struct {
	agent.Host // unused methods panic: with the fleet off none is called
	applied    []*config.Config
}

func (r *applyRecorder) Apply(c *config.Config) error {
	r.applied = append(r.applied, c)
	return nil
}

// A unit whose config switches the fleet off, or a real unit given no
// broker, runs on its own config with no fleet: nothing in its status,
// no token requests, and the fleet's run ends at once.
func TestOpenFleetOff(t *testing.T) {
	for name, tc := range map[string]struct {
		toml     string
		simulate bool
	}{
		"disabled":              {"[fleet]\nenabled = false\n", true},
		"no broker, real board": {"[fleet]\nenabled = true\nbroker = \"\"\n", false},
	} {
		t.Run(name, func(t *testing.T) {
			local := localConfig(t, tc.toml)
			f, err := agent.OpenFleet(agent.FleetOptions{Local: local, Simulate: tc.simulate})
			if err != nil || f != nil {
				t.Fatalf("OpenFleet = %v, %v; want the fleet off", f, err)
			}
			if st := f.Status(); st != nil {
				t.Errorf("status with the fleet off = %#v, want none", st)
			}
			if f.TokenRequests() != nil || f.Identity() != nil || f.Demo() != nil {
				t.Error("a fleet that is off hands out token requests, an identity or a demo broker")
			}
			u := &applyRecorder{}
			if err := f.Start(u, nil, nil, local); err != nil {
				t.Fatal(err)
			}
			if len(u.applied) != 1 || u.applied[0] != local {
				t.Fatalf("with the fleet off the unit got %d configs, want its own config once", len(u.applied))
			}
			if _, open := <-f.Run(context.Background()); open {
				t.Error("the fleet's run with the fleet off did not end at once")
			}
			f.Close()
		})
	}
}

// roomd --sim with no broker: the embedded demo broker on loopback, and
// its signing key where the status says, 0600, for fleetctl.
func TestOpenFleetSimDemo(t *testing.T) {
	dir := t.TempDir()
	local := localConfig(t, "[fleet]\nenabled = true\nbroker = \"\"\nstate_dir = \""+dir+"\"\n")
	f, err := agent.OpenFleet(agent.FleetOptions{Local: local, Simulate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, ok := f.Status().(*agent.LocalStatus)
	if !ok || !strings.HasPrefix(st.Broker, "tcp://127.0.0.1:") || st.DemoKey == "" {
		t.Fatalf("demo status = %#v", f.Status())
	}
	fi, err := os.Stat(st.DemoKey)
	if err != nil || fi.Mode().Perm() != 0o600 || !strings.HasPrefix(st.DemoKey, dir) {
		t.Fatalf("demo signing key %s: %v, %v; want a 0600 file under the fleet state", st.DemoKey, fi, err)
	}
}
