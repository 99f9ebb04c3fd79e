package agent_test

import (
	"github.com/konsult/konsult/appliance/agent"
	"strings"
	"testing"
	"time"
)

// A config that leaves the fleet connection as it was keeps the connection:
// an enrolled unit's link has an OnConnectError hook, and comparing it made
// every apply look like a change of broker (fleetwalk saw `fleetctl cmd`
// right after a push find the unit offline).
func TestApplyKeepsConnectionWithHooks(t *testing.T) {
	u := newUnit(t)
	hook := func(error) {}
	u.opts.Connection.Link.OnConnectError = hook
	connFor := u.opts.ConnectionFor
	u.opts.ConnectionFor = func(eff []byte) (c agent.Connection, err error) {
		c, err = connFor(eff)
		c.Link.OnConnectError = func(error) {}
		return c, err
	}
	u.start()
	u.push(cfg{version: 1, target: dev, toml: "[log]\nlevel = \"warn\"\n"})
	u.nextApplied(5 * time.Second)
	time.Sleep(300 * time.Millisecond)
	if l := u.logs.String(); strings.Contains(l, "reconnecting") {
		t.Fatalf("the unit reconnected after a config that kept its broker:\n%s", l)
	}
}
