package link_test

import (
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/deploy/mosquitto"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/link"
)

func TestACLRendersShippedTextAndGroupBlocks(t *testing.T) {
	got, err := link.ACL(map[string][]string{
		"room-12": {"ward-3", "all", "ward-3"},
		"room-2":  nil,
	}, "ops")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(mosquitto.ACL, "\nuser fleet-admin\n", "\nuser ops\n", 1) + `
user room-12
topic read konsult/group/all/config
topic read konsult/group/all/cmd
topic read konsult/group/ward-3/config
topic read konsult/group/ward-3/cmd
`
	if got != want {
		t.Fatalf("ACL =\n%s\nwant\n%s", got, want)
	}
}

func TestACLRefusesNamesThatWouldChangeTheFile(t *testing.T) {
	for _, units := range []map[string][]string{
		{"room-1": {"x\ntopic readwrite #"}},
		{"room-1": {"ward/3"}},
		{"room 1": {"ward"}},
		{"room-+": {"ward"}},
		{"fleet-admin": {"ward"}},
	} {
		if _, err := link.ACL(units, ""); err == nil {
			t.Errorf("ACL(%q) accepted", units)
		}
	}
}

// The shipped ACL on a real Mosquitto: a unit's certificate reads its own
// config and no one else's, and cannot write another unit's status or
// events, nor its own config.
func TestUnitIsConfinedToItsOwnTopics(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil, "unit-b": nil}})
	admin := b.Client(t, "fleet-admin")
	publish(t, admin, topics.DeviceConfig("unit-a"), true, "config-for-a")
	publish(t, admin, topics.DeviceConfig("unit-b"), true, "config-for-b")

	// The link receives its own retained config.
	l := dial(t, unitOpts(t, b, "unit-a"))
	m := nextMessage(t, l, 5*time.Second)
	if m.Kind != link.DeviceConfig || string(m.Payload) != "config-for-a" || !m.Retained {
		t.Fatalf("got %s %q retained=%v, want unit-a's retained config", m.Kind, m.Payload, m.Retained)
	}

	// A client holding unit-a's certificate that asks for more gets nothing
	// more. Ordered delivery, so when the sentinel on its own cmd topic
	// arrives, anything published before it would have too.
	spy := newRecorder()
	c := b.Client(t, "unit-a", func(o *mqtt.ClientOptions) { o.SetOrderMatters(true) })
	subscribe(t, c, spy, topics.DeviceConfig("unit-b"), topics.DeviceCmd("unit-b"), "konsult/#")
	publish(t, admin, topics.DeviceConfig("unit-b"), true, "config-for-b-v2")
	publish(t, admin, topics.DeviceCmd("unit-b"), false, "cmd-for-b")
	publish(t, admin, topics.DeviceCmd("unit-a"), false, "sentinel")
	spy.waitFor(t, 5*time.Second, "unit-a's own cmd", func(m mqtt.Message) bool { return string(m.Payload()) == "sentinel" })
	if m := nextMessage(t, l, 5*time.Second); string(m.Payload) != "sentinel" {
		t.Fatalf("link got %s %q, want only the sentinel", m.Topic, m.Payload)
	}
	time.Sleep(300 * time.Millisecond)
	for _, m := range spy.all() {
		if strings.Contains(m.Topic(), "unit-b") {
			t.Errorf("unit-a's certificate received %s (%q)", m.Topic(), m.Payload())
		}
	}

	// Writes outside its own status/reported/events are dropped by the
	// broker (MQTT 3.1.1 has no way to say so; the PUBACK still comes).
	watch := newRecorder()
	adminWatch := b.Client(t, "fleet-admin", func(o *mqtt.ClientOptions) { o.SetOrderMatters(true) })
	subscribe(t, adminWatch, watch, "konsult/#")
	publish(t, c, topics.Status("unit-b"), true, `{"online":false,"forged":true}`)
	publish(t, c, topics.Events("unit-b"), false, `{"id":"forged"}`)
	publish(t, c, topics.DeviceConfig("unit-a"), true, "self-signed-config")
	publish(t, c, topics.Events("unit-a"), false, `{"id":"sentinel"}`)
	watch.waitFor(t, 5*time.Second, "unit-a's own event", func(m mqtt.Message) bool {
		return m.Topic() == topics.Events("unit-a")
	})
	time.Sleep(300 * time.Millisecond)
	for _, m := range watch.all() {
		if strings.Contains(string(m.Payload()), "forged") || string(m.Payload()) == "self-signed-config" {
			t.Errorf("fleet saw a forbidden write by unit-a on %s: %q", m.Topic(), m.Payload())
		}
	}
	noMessage(t, l, 200*time.Millisecond)
}

// A unit in group g receives g's retained config; a unit outside g does not,
// even when it (wrongly) asks for it.
func TestGroupConfigReachesOnlyTheGroup(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{
		"unit-a": {"ward-3"},
		"unit-b": {"ward-4"},
	}})
	admin := b.Client(t, "fleet-admin")
	publish(t, admin, topics.GroupConfig("ward-3"), true, "ward-3-config")

	a := dial(t, unitOpts(t, b, "unit-a", "ward-3"))
	m := nextMessage(t, a, 5*time.Second)
	if m.Kind != link.GroupConfig || m.Group != "ward-3" || string(m.Payload) != "ward-3-config" || !m.Retained {
		t.Fatalf("unit-a got %s/%s %q retained=%v, want ward-3's retained config", m.Kind, m.Group, m.Payload, m.Retained)
	}

	// unit-b is configured as if it were in ward-3, but the broker's ACL
	// says it is not.
	o := unitOpts(t, b, "unit-b", "ward-3")
	bl, err := link.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bl.Close() })
	publish(t, admin, topics.GroupCmd("ward-3"), false, "ward-3-cmd")
	m = nextMessage(t, a, 5*time.Second)
	if m.Kind != link.GroupCmd || m.Group != "ward-3" {
		t.Fatalf("unit-a got %s/%s, want ward-3's command", m.Kind, m.Group)
	}
	noMessage(t, bl, time.Second)

	// The unit asked the broker for exactly its own topics.
	var subs []string
	for line := range strings.Lines(b.Log()) {
		if f := strings.Fields(line); len(f) == 4 && f[1] == "unit-a" && f[2] == "1" {
			subs = append(subs, f[3])
		}
	}
	want := []string{
		topics.DeviceConfig("unit-a"), topics.DeviceCmd("unit-a"),
		topics.GroupConfig("ward-3"), topics.GroupCmd("ward-3"),
	}
	if !sameSet(subs, want) {
		t.Fatalf("unit-a subscribed to %q, want exactly %q", subs, want)
	}
}

func sameSet(a, b []string) bool {
	m := map[string]bool{}
	for _, s := range a {
		m[s] = true
	}
	if len(m) != len(b) {
		return false
	}
	for _, s := range b {
		if !m[s] {
			return false
		}
	}
	return true
}
