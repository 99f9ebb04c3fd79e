package manager

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

func reportedMsg(t *testing.T, id string, r fleet.ReportedDoc) Msg {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return Msg{Kind: link.DeviceReported, Unit: id, Payload: b}
}

// The view follows the retained documents: odd ones are ignored, an empty
// retained message deletes one, and last seen only moves forward.
func TestViewFeed(t *testing.T) {
	v := NewView()
	at := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	if !v.Feed(reportedMsg(t, "ku-a", fleet.ReportedDoc{Groups: []string{"ward"}, At: at})) {
		t.Fatal("a reported document was not taken")
	}
	if !v.Feed(Msg{Kind: link.DeviceStatus, Unit: "ku-a", Payload: []byte("{not json")}) {
		t.Fatal("a status message was not recognised")
	}
	u := v.Unit("ku-a")
	if !u.InGroup("ward") || u.Status != nil || !u.Seen.Equal(at) {
		t.Fatalf("after the documents: %+v", u)
	}
	v.Feed(reportedMsg(t, "ku-a", fleet.ReportedDoc{At: at.Add(-time.Hour)}))
	if !u.Seen.Equal(at) {
		t.Errorf("last seen went back to %s", u.Seen)
	}
	v.Feed(Msg{Kind: link.DeviceReported, Unit: "ku-a"})
	if u.Reported != nil {
		t.Error("an empty retained message did not delete the reported document")
	}
	if v.Feed(Msg{Kind: link.DeviceEvents, Unit: "ku-a", Payload: []byte(`{}`)}) {
		t.Error("an event was taken as a document")
	}
	v.Unit("ku-0")
	if s := v.Sorted(); len(s) != 2 || s[0].ID != "ku-0" {
		t.Errorf("sorted: %v", s)
	}
}

func TestParseEventAndDedup(t *testing.T) {
	m := Msg{Kind: link.DeviceEvents, Unit: "ku-a", Payload: []byte(`{"id":"e1","type":"config_applied","at":"2026-11-23T09:00:00Z","data":{"version":3}}`)}
	ev, ok := ParseEvent(m)
	if !ok || ev.Unit != "ku-a" || ev.ID != "e1" || ev.Type != fleet.EventConfigApplied || !strings.Contains(string(ev.Data), "3") {
		t.Fatalf("ParseEvent: %+v %v", ev, ok)
	}
	if _, ok := ParseEvent(Msg{Kind: link.DeviceEvents, Payload: []byte(`{"type":"x"}`)}); ok {
		t.Error("an event without an id was taken")
	}
	d := NewDedup(2)
	if !d.First("a") || d.First("a") || !d.First("b") || !d.First("c") || !d.First("a") {
		t.Error("dedup does not remember exactly the last n ids")
	}
}

// A push units would refuse as stale is refused before publishing: it
// would also replace the newer retained config.
func TestCheckNotStale(t *testing.T) {
	target := fleet.Target{Group: "ward"}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	retained := func(v uint64) []byte {
		now := time.Now()
		e, err := fleet.SignConfig(priv, fleet.ConfigPayload{Version: v, Target: target, IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		return e.Marshal()
	}
	v := NewView()
	v.Feed(reportedMsg(t, "ku-a", fleet.ReportedDoc{Groups: []string{"ward"}, Versions: map[string]uint64{target.Key(): 4}}))
	p := fleet.ConfigPayload{Version: 3, Target: target}
	if err := CheckNotStale(p, []byte("new"), retained(5), NewView()); err == nil || !strings.Contains(err.Error(), "holds version 5") {
		t.Errorf("below the retained version: %v", err)
	}
	if err := CheckNotStale(p, []byte("new"), nil, v); err == nil || !strings.Contains(err.Error(), "ku-a already runs version 4") {
		t.Errorf("below what a unit runs: %v", err)
	}
	// Publishing the very envelope the broker holds heals a broker that
	// lost its retained store, although ku-a runs that version.
	same := retained(4)
	if err := CheckNotStale(fleet.ConfigPayload{Version: 4, Target: target}, same, same, v); err != nil {
		t.Errorf("the very envelope the broker holds: %v", err)
	}
	p.Version = 5
	if err := CheckNotStale(p, []byte("new"), retained(4), v); err != nil {
		t.Errorf("a newer version: %v", err)
	}
}

func TestPushOutcome(t *testing.T) {
	p := fleet.ConfigPayload{Version: 7, Target: fleet.Target{Group: "ward"}}
	if err := PushOutcome(p, []PushResult{{Result: ResApplied}, {Result: ResDeferred}, {Result: ResRevoked}}); err != nil {
		t.Errorf("applied, deferred and revoked: %v", err)
	}
	err := PushOutcome(p, []PushResult{{Result: ResApplied}, {Result: ResRejected}, {Result: ResOffline}})
	if err == nil || !strings.Contains(err.Error(), "2 of 3") || !strings.Contains(err.Error(), "stays retained") {
		t.Errorf("rejected and offline: %v", err)
	}
}
