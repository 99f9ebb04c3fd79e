package link_test

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/konsult/konsult/provisioning/link"
)

// lateACL refuses reading group ward's topics until open is set, as a
// broker does for a unit whose group lines fleetctl acl has not written yet.
// Unlike Mosquitto 2.0 (which grants the subscription and withholds the
// messages), mochi refuses the SUBSCRIBE itself: SUBACK 0x80.
type lateACL struct {
	mqtt.HookBase
	open atomic.Bool
}

func (h *lateACL) ID() string { return "late-acl" }
func (h *lateACL) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (h *lateACL) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (h *lateACL) OnACLCheck(_ *mqtt.Client, topic string, write bool) bool {
	t := link.Topics{}
	if !write && (topic == t.GroupConfig("ward") || topic == t.GroupCmd("ward")) {
		return h.open.Load()
	}
	return true
}

// TestRefusedGroupSubscriptionIsRetried: a SUBACK 0x80 for a group topic
// used to keep the link down (no status, no device config) until the next
// reconnect, and the group's config and commands never came. Now the link
// comes up and retries the group with backoff until the broker lets it in.
func TestRefusedGroupSubscriptionIsRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := mqtt.New(&mqtt.Options{InlineClient: true})
	acl := &lateACL{}
	if err := srv.AddHook(acl, nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	tp := link.Topics{}
	if err := srv.Publish(tp.GroupConfig("ward"), []byte(`{"v":1}`), true, 1); err != nil {
		t.Fatal(err)
	}

	l, err := link.Open(link.Options{
		Broker: "tcp://" + addr, DeviceID: "ku-1", Groups: []string{"ward"},
		StoreDir: t.TempDir(), RetryMin: 200 * time.Millisecond, RetryMax: time.Second,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	deadline := time.Now().Add(5 * time.Second)
	for !l.Connected() {
		if time.Now().After(deadline) {
			t.Fatalf("link not up while only its group subscriptions are refused: %v", l.LastError())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	acl.open.Store(true)

	timeout := time.After(10 * time.Second)
	gotConfig := false
	for !gotConfig {
		select {
		case m := <-l.Messages():
			gotConfig = m.Kind == link.GroupConfig && m.Group == "ward"
		case <-timeout:
			t.Fatal("group config never delivered after the broker let the unit in")
		}
	}
	// The refused cmd subscription was retried too: a group command now
	// reaches the unit.
	cmdDeadline := time.Now().Add(10 * time.Second)
	for {
		if err := srv.Publish(tp.GroupCmd("ward"), []byte(`{"c":1}`), false, 1); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-l.Messages():
			if m.Kind == link.GroupCmd {
				return
			}
		case <-time.After(300 * time.Millisecond):
		}
		if time.Now().After(cmdDeadline) {
			t.Fatal("group command never delivered: the refused cmd subscription was not retried")
		}
	}
}
