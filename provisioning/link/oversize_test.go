package link_test

import (
	"bytes"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/konsult/konsult/provisioning/link"
)

// hugeBroker is a minimal MQTT 3.1.1 broker (CONNECT, SUBSCRIBE, PUBLISH
// acks, PING) that hands every subscriber a retained config on the unit's
// topic: a huge one (streamed, never held in memory) or, once fixed, a
// small one. A real broker without message_size_limit delivers the huge
// one the same way.
type hugeBroker struct {
	l       net.Listener
	topic   string
	size    int // payload bytes of the huge config
	fixed   atomic.Bool
	legit   []byte
	conns   atomic.Int32
	mu      sync.Mutex
	streams []net.Conn
}

func newHugeBroker(t *testing.T, topic string, size int) *hugeBroker {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &hugeBroker{l: l, topic: topic, size: size, legit: []byte(`{"small":"signed config"}`)}
	t.Cleanup(func() {
		l.Close()
		b.mu.Lock()
		for _, c := range b.streams {
			c.Close()
		}
		b.mu.Unlock()
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b.conns.Add(1)
			b.mu.Lock()
			b.streams = append(b.streams, c)
			b.mu.Unlock()
			go b.serve(c)
		}
	}()
	return b
}

func (b *hugeBroker) URL() string { return "tcp://" + b.l.Addr().String() }

func (b *hugeBroker) serve(c net.Conn) {
	defer c.Close()
	var wmu sync.Mutex
	write := func(p packets.ControlPacket) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = p.Write(c)
	}
	for {
		p, err := packets.ReadPacket(c)
		if err != nil {
			return
		}
		switch p := p.(type) {
		case *packets.ConnectPacket:
			write(packets.NewControlPacket(packets.Connack))
		case *packets.SubscribePacket:
			ack := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
			ack.MessageID = p.MessageID
			ack.ReturnCodes = p.Qoss
			write(ack)
			if b.fixed.Load() {
				pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
				pub.TopicName, pub.Retain, pub.Payload = b.topic, true, b.legit
				write(pub)
				continue
			}
			go func() { // stream it while still answering pings and acks
				wmu.Lock()
				defer wmu.Unlock()
				b.writeHuge(c)
			}()
		case *packets.PublishPacket:
			if p.Qos == 1 {
				ack := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
				ack.MessageID = p.MessageID
				write(ack)
			}
		case *packets.PingreqPacket:
			write(packets.NewControlPacket(packets.Pingresp))
		case *packets.DisconnectPacket:
			return
		}
	}
}

// writeHuge writes a retained QoS 0 PUBLISH of b.size payload bytes.
func (b *hugeBroker) writeHuge(c net.Conn) {
	var h bytes.Buffer
	h.WriteByte(0x31) // PUBLISH, QoS 0, retain
	n := 2 + len(b.topic) + b.size
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		h.WriteByte(d)
		if n == 0 {
			break
		}
	}
	h.WriteByte(byte(len(b.topic) >> 8))
	h.WriteByte(byte(len(b.topic)))
	h.WriteString(b.topic)
	if _, err := c.Write(h.Bytes()); err != nil {
		return
	}
	chunk := make([]byte, 64<<10)
	for left := b.size; left > 0; left -= len(chunk) {
		if _, err := c.Write(chunk[:min(len(chunk), left)]); err != nil {
			return
		}
	}
}

// TestOversizedRetainedConfigRefused: a broker (compromised, or without
// message_size_limit) delivers a 200 MB retained config. Before the limit,
// paho allocated and read all of it (roomd: 7.8 MB → 420 MB), and it came
// again at every start. The unit must drop the connection with a clear
// error before reading it, its heap must stay flat, and once the fleet
// replaced the config it must reconnect and take the new one.
func TestOversizedRetainedConfigRefused(t *testing.T) {
	const id = "unit-big"
	b := newHugeBroker(t, topics.DeviceConfig(id), 200<<20)
	opts := link.Options{
		Broker: b.URL(), DeviceID: id, StoreDir: filepath.Join(t.TempDir(), "store"),
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, KeepAlive: 5 * time.Second,
		Logger: testLogger(t),
	}
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	base := m.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	l, err := link.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var refusal error
	deadline := time.After(20 * time.Second)
	for refusal == nil {
		select {
		case st := <-l.States():
			if !st.Up && st.Err != nil {
				refusal = st.Err
			}
		case msg := <-l.Messages():
			t.Fatalf("a %d-byte config was delivered (heap peak %.0f MB above the start)", len(msg.Payload), float64(peak.Load()-base)/1e6)
		case <-deadline:
			t.Fatalf("no refusal of the 200 MB config within 20 s (heap peak %.0f MB above the start)", float64(peak.Load()-base)/1e6)
		}
	}
	time.Sleep(300 * time.Millisecond) // a second delivery after the reconnect
	grew := float64(peak.Load()-base) / 1e6
	t.Logf("200 MB retained config: %v; heap in use peaked %.1f MB above the start", refusal, grew)
	if !errors.Is(refusal, link.ErrPacketTooLarge) {
		t.Errorf("the link went down with %v, want a reason that says the packet was too large", refusal)
	}
	if grew > 40 {
		t.Errorf("heap grew by %.0f MB reading a config the unit refuses", grew)
	}

	b.fixed.Store(true) // the fleet pushes a proper config over it
	select {
	case msg := <-l.Messages():
		if !bytes.Equal(msg.Payload, b.legit) || !msg.Retained {
			t.Errorf("got %q (retained %v) after the fix", msg.Payload, msg.Retained)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the unit did not reconnect and take the proper config")
	}
}
