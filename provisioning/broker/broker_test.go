package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/provisioning/broker"
	"github.com/konsult/konsult/provisioning/link"
)

func start(t *testing.T) *broker.Broker {
	t.Helper()
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func connect(t *testing.T, b *broker.Broker, id string) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(b.URL()).SetClientID(id)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func TestPublishSubscribe(t *testing.T) {
	b := start(t)
	got := make(chan string, 1)
	sub := connect(t, b, "fleetctl")
	if tok := sub.Subscribe("konsult/device/+/events", 1, func(_ paho.Client, m paho.Message) {
		got <- m.Topic() + " " + string(m.Payload())
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub := connect(t, b, "unit-a")
	if tok := pub.Publish("konsult/device/unit-a/events", 1, false, `{"id":"1"}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case m := <-got:
		if m != `konsult/device/unit-a/events {"id":"1"}` {
			t.Fatalf("got %s", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("message not delivered")
	}
}

// The demo's unit talks to the embedded broker through the same link as in
// the field, over plain TCP on loopback.
func TestLinkThroughEmbeddedBroker(t *testing.T) {
	b := start(t)
	fleet := connect(t, b, "fleetctl")
	topics := link.Topics{}
	if tok := fleet.Publish(topics.DeviceConfig("demo"), 1, true, "cfg"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := link.Dial(ctx, link.Options{Broker: b.URL(), DeviceID: "demo", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	select {
	case m := <-l.Messages():
		if m.Kind != link.DeviceConfig || string(m.Payload) != "cfg" {
			t.Fatalf("got %s %q", m.Kind, m.Payload)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("retained config not delivered")
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:1883"} {
		if b, err := broker.Start(addr); err == nil {
			b.Close()
			t.Errorf("Start(%q) accepted", addr)
		}
	}
}

// Units republish retained status while fleetctl subscribes with wildcards
// (each fleetctl units or watch is a new client): every subscription gets the
// retained status, and under -race this catches the unlocked
// retained-message index in mochi.
func TestRetainedWhileWildcardSubscribing(t *testing.T) {
	b := start(t)
	pub := connect(t, b, "unit-a")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ctx.Err() == nil; i++ {
			// New topics too: mochi writes a topic's retain path on each.
			topic := fmt.Sprintf("konsult/device/unit-%d/status", i%50)
			pub.Publish(topic, 1, true, `{"online":true}`).WaitTimeout(time.Second)
			time.Sleep(time.Millisecond) // a busy fleet, not a flood
		}
	}()
	n := 0
	for ; ctx.Err() == nil; n++ {
		got := make(chan struct{}, 1)
		sub := connect(t, b, fmt.Sprintf("fleetctl-%d", n))
		tok := sub.Subscribe("konsult/device/+/status", 1, func(paho.Client, paho.Message) {
			select {
			case got <- struct{}{}:
			default:
			}
		})
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("subscription %d: no retained status delivered", n+1)
		}
		sub.Disconnect(0)
	}
	<-done
	t.Logf("%d wildcard subscriptions each got the retained status", n)
}
