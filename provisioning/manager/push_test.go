package manager

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// standInUnit publishes a unit's retained status and reported documents as
// its own certificate allows, and answers every config it receives on its
// group with answer (an event type) for the version it read.
func standInUnit(t *testing.T, b *brokertest.Broker, id, group, answer string) {
	t.Helper()
	c := b.UnitClient(t, id)
	tp := link.Topics{}
	now := time.Now().UTC()
	pub := func(topic string, retained bool, v any) {
		raw, _ := json.Marshal(v)
		if tok := c.Publish(topic, 1, retained, raw); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Errorf("%s: publish %s: %v", id, topic, tok.Error())
		}
	}
	pub(tp.Status(id), true, fleet.StatusDoc{Online: true, State: "idle", At: now})
	pub(tp.Reported(id), true, fleet.ReportedDoc{Device: id, Groups: []string{group}, Versions: map[string]uint64{}, At: now})
	tok := c.Subscribe(tp.GroupConfig(group), 1, func(_ mqtt.Client, m mqtt.Message) {
		e, err := fleet.ParseEnvelope(m.Payload())
		if err != nil {
			return
		}
		var p fleet.ConfigPayload
		if json.Unmarshal(e.Payload, &p) != nil {
			return
		}
		ev := link.Event{ID: fleet.NewNonce(), Type: answer, At: time.Now().UTC()}
		if answer == fleet.EventConfigRejected {
			ev.Data = fleet.Rejection{Target: p.Target.Key(), Version: p.Version, Reason: "schema", Message: "no such key", At: ev.At}
		} else {
			ev.Data = fleet.ConfigApplied{Target: p.Target.Key(), Version: p.Version, Generation: 1}
		}
		go pub(tp.Events(id), false, ev)
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: subscribe: %v", id, tok.Error())
	}
}

// The push job end to end on the shipped broker: published retained, each
// unit of the group followed to its answer.
func TestPushFollowsEachUnit(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": {"ward"}, "unit-b": {"ward"}}})
	standInUnit(t, b, "unit-a", "ward", fleet.EventConfigApplied)
	standInUnit(t, b, "unit-b", "ward", fleet.EventConfigRejected)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p := fleet.ConfigPayload{Version: 1, Target: fleet.Target{Group: "ward"}, IssuedAt: now, ExpiresAt: now.Add(time.Hour), Config: "[call]\n"}
	e, err := fleet.SignConfig(priv, p)
	if err != nil {
		t.Fatal(err)
	}
	a := b.Admin()
	br := Broker{URL: b.SharedURL(), CA: b.CAFile(), Cert: a.CertFile, CertKey: a.KeyFile, Prefix: link.DefaultPrefix}
	res, err := Push(t.Context(), br, slog.New(slog.DiscardHandler), PushOptions{Envelope: e, Payload: p, Wait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Unit != "unit-a" || res[0].Result != ResApplied || res[1].Result != ResRejected || res[1].Reason != "schema" {
		t.Fatalf("results: %+v", res)
	}
	if err := PushOutcome(p, res); err == nil {
		t.Error("a push one unit rejected succeeded")
	}
	// A version below the one the broker now holds is refused before it
	// could replace it.
	old := p
	old.Version = 0
	e0, _ := fleet.SignConfig(priv, old)
	if _, err := Push(t.Context(), br, slog.New(slog.DiscardHandler), PushOptions{Envelope: e0, Payload: old}); err == nil {
		t.Error("a push below the retained version was published")
	}
}
