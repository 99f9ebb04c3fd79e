package manager

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/link"
)

type fakeMsg struct {
	mqtt.Message
	topic   string
	payload []byte
}

func (m fakeMsg) Topic() string   { return m.topic }
func (m fakeMsg) Payload() []byte { return m.payload }
func (m fakeMsg) Retained() bool  { return true }

// The client caps what it reads, whatever the broker lets through: a
// message above the largest legitimate one (a signed config envelope) is
// dropped, not queued.
func TestClientCapsMessages(t *testing.T) {
	fc := &Client{log: slog.New(slog.DiscardHandler), wake: make(chan struct{}, 1)}
	topic := link.Topics{}.Reported("ku-a")
	fc.onMessage(nil, fakeMsg{topic: topic, payload: make([]byte, maxMessage+1)})
	if len(fc.queue) != 0 {
		t.Fatalf("the client queued a %d-byte message", maxMessage+1)
	}
	fc.onMessage(nil, fakeMsg{topic: topic, payload: make([]byte, maxMessage)})
	if len(fc.queue) != 1 {
		t.Fatalf("the client dropped a %d-byte message", maxMessage)
	}
}

// hostileBroker is a minimal MQTT 3.1.1 broker that answers CONNECT and
// SUBSCRIBE and then streams a retained PUBLISH of size payload bytes (never
// held in memory) to every subscriber.
type hostileBroker struct {
	l     net.Listener
	topic string
	size  int
	conns atomic.Int32
	mu    sync.Mutex
	open  []net.Conn
}

func newHostileBroker(t *testing.T, topic string, size int) *hostileBroker {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &hostileBroker{l: l, topic: topic, size: size}
	t.Cleanup(func() {
		l.Close()
		b.mu.Lock()
		for _, c := range b.open {
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
			b.open = append(b.open, c)
			b.mu.Unlock()
			go b.serve(c)
		}
	}()
	return b
}

func (b *hostileBroker) serve(c net.Conn) {
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
			go func() {
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

func (b *hostileBroker) writeHuge(c net.Conn) {
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

// TestHostileBrokerCannotMakeTheClientAllocate: a broker (compromised, or
// without message_size_limit) sends a 200 MB retained reported document.
// paho allocates a packet's whole remaining length before anything can
// look at it, so the size cap in onMessage comes too late: the connection
// must refuse the packet from its header, and the heap stay flat.
func TestHostileBrokerCannotMakeTheClientAllocate(t *testing.T) {
	topic := link.Topics{Prefix: link.DefaultPrefix}.Reported("ku-a")
	b := newHostileBroker(t, topic, 200<<20)
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
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	fc, err := Dial(ctx, Broker{URL: "tcp://" + b.l.Addr().String(), Prefix: link.DefaultPrefix}, slog.New(slog.DiscardHandler), link.Topics{Prefix: link.DefaultPrefix}.AllDevices(link.DeviceReported))
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	// Until the broker was dropped and dialled again: the packet was refused.
	for b.conns.Load() < 2 {
		if ctx.Err() != nil {
			t.Fatalf("the client never dropped the connection carrying the 200 MB packet (heap peak %.0f MB above the start)", float64(peak.Load()-base)/1e6)
		}
		time.Sleep(10 * time.Millisecond)
	}
	nctx, ncancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer ncancel()
	if msg, err := fc.Next(nctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got a %d-byte message from the hostile broker (err %v)", len(msg.Payload), err)
	}
	grew := float64(peak.Load()-base) / 1e6
	t.Logf("200 MB retained document: heap in use peaked %.1f MB above the start", grew)
	if grew > 40 {
		t.Errorf("heap grew by %.0f MB reading a packet the client refuses", grew)
	}
}

func (m fakeMsg) Ack() {}

// On a persistent session (fleetd's audit store) a message the process
// had not handled when it stopped is not lost: the broker sends it again
// on the next connect, because it was acknowledged only once handled.
// Before, paho acknowledged each message as it was queued, and the ones
// still queued at the stop were gone for good.
func TestSessionKeepsWhatWasNotHandled(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil}})
	a := b.Admin()
	br := Broker{URL: b.SharedURL(), CA: b.CAFile(), Cert: a.CertFile, CertKey: a.KeyFile, Prefix: link.DefaultPrefix, Client: "fleetd", Session: "test-store"}
	tp := link.Topics{Prefix: link.DefaultPrefix}
	dial := func() *Client {
		fc, err := Dial(t.Context(), br, slog.New(slog.DiscardHandler), tp.AllDevices(link.DeviceAudit))
		if err != nil {
			t.Fatal(err)
		}
		return fc
	}
	fc := dial() // the session and its subscription exist from here on
	unit := b.UnitClient(t, "unit-a")
	for i := range 10 {
		if tok := unit.Publish(tp.Audit("unit-a"), 1, false, []byte(strconv.Itoa(i))); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	// Handle the first three; the third is taken but not yet handled when
	// the process stops.
	for i := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		m, err := fc.Next(ctx)
		cancel()
		if err != nil || string(m.Payload) != strconv.Itoa(i) {
			t.Fatalf("message %d: %q %v", i, m.Payload, err)
		}
	}
	time.Sleep(300 * time.Millisecond) // what paho would have acknowledged by now
	fc.Close()

	fc = dial()
	defer fc.Close()
	var got []string
	for len(got) < 8 {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		m, err := fc.Next(ctx)
		cancel()
		if err != nil {
			break
		}
		got = append(got, string(m.Payload))
	}
	// At least once: from the one not handled (2) to the last (9), in order.
	want := []string{"2", "3", "4", "5", "6", "7", "8", "9"}
	if !slices.Equal(got, want) {
		t.Fatalf("after the restart the session delivered %q, want %q", got, want)
	}
}
