package link_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/link"
)

func TestPlainTCPOnlyToLoopback(t *testing.T) {
	for _, broker := range []string{"tcp://10.0.0.7:1883", "mqtt://broker.clinic.example", "tcp://0.0.0.0:1883"} {
		_, err := link.Open(link.Options{Broker: broker, DeviceID: "unit-a", StoreDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "unencrypted") {
			t.Errorf("Open(%s) = %v, want a refusal that says the traffic would be unencrypted", broker, err)
		}
	}
	for _, broker := range []string{"http://127.0.0.1", "mqtts://user:secret@broker.example"} {
		_, err := link.Open(link.Options{Broker: broker, DeviceID: "unit-a", StoreDir: t.TempDir()})
		if err == nil {
			t.Errorf("Open(%s) accepted", broker)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("error repeats the password: %v", err)
		}
	}
	l, err := link.Open(link.Options{Broker: "tcp://127.0.0.1:1", DeviceID: "unit-a", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("tcp:// to loopback refused: %v", err)
	}
	l.Close()
}

// roomd's rollback asks: did the unit reach its broker within T? A broker
// whose certificate the unit cannot verify is not reached, and the error
// says why.
func TestDialReportsWhyTheBrokerWasNotReached(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil}})
	other := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil}})
	o := unitOpts(t, b, "unit-a")
	o.CAFile = other.CAFile() // not the CA that signed b's certificate

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	l, err := link.Dial(ctx, o)
	if err == nil {
		l.Close()
		t.Fatal("Dial succeeded against a broker signed by another CA")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("Dial error = %v, want the deadline and the certificate failure", err)
	}
	if el := time.Since(start); el > 4*time.Second {
		t.Fatalf("Dial took %s with a 2 s deadline", el)
	}
}

// A unit whose connection dies without a DISCONNECT is shown offline by its
// last will; once the network is back it is online again. Close announces
// offline itself.
func TestStatusFollowsTheConnection(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil}})
	net := brokertest.NewProxy(t, b.Addr())
	o := unitOpts(t, b, "unit-a")
	o.Broker = net.URL()
	l := dial(t, o)
	if !l.Connected() {
		t.Fatal("Connected() = false after Dial")
	}
	if s := <-l.States(); !s.Up {
		t.Fatalf("first state change = %+v, want up", s)
	}

	admin := b.Client(t, "fleet-admin", func(o *mqtt.ClientOptions) { o.SetOrderMatters(true) })
	st := newRecorder()
	subscribe(t, admin, st, topics.Status("unit-a"))
	online := func(want bool) func(mqtt.Message) bool {
		return func(m mqtt.Message) bool { return statusOf(t, m).Online == want }
	}
	first := st.waitFor(t, 5*time.Second, "online status", online(true))
	if s := statusOf(t, first); s.State != "idle" || s.Version != "test" || !first.Retained() {
		t.Fatalf("status = %s (retained %v), want online, idle, test, retained", first.Payload(), first.Retained())
	}

	net.Cut(true) // the cable, not roomd: no DISCONNECT
	will := st.waitFor(t, 5*time.Second, "offline status from the last will", online(false))
	if string(will.Payload()) != `{"online":false}` {
		t.Fatalf("will = %s", will.Payload())
	}
	// A dashboard that connects now sees the retained offline status.
	late := newRecorder()
	subscribe(t, b.Client(t, "fleet-admin"), late, topics.Status("unit-a"))
	if m := late.waitFor(t, 5*time.Second, "retained status", func(mqtt.Message) bool { return true }); statusOf(t, m).Online {
		t.Fatalf("retained status after the cut = %s, want offline", m.Payload())
	}
	waitState(t, l, false)
	if l.Connected() {
		t.Fatal("Connected() = true with the network cut")
	}

	n := len(st.all())
	net.SetDown(false)
	waitState(t, l, true)
	st.waitFrom(t, n, 10*time.Second, "online again", online(true))

	if err := l.PublishStatus(link.Status{State: "in_call", Version: "test"}); err != nil {
		t.Fatal(err)
	}
	st.waitFor(t, 5*time.Second, "in_call status", func(m mqtt.Message) bool { return statusOf(t, m).State == "in_call" })

	l.Close()
	st.waitFor(t, 5*time.Second, "offline on Close", func(m mqtt.Message) bool {
		s := statusOf(t, m)
		return !s.Online && s.State == "in_call"
	})
	if _, err := l.PublishEvent(link.Event{Type: "late"}); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("PublishEvent after Close = %v, want ErrClosed", err)
	}
}

func waitState(t *testing.T, l *link.Link, up bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case s, ok := <-l.States():
			if !ok {
				t.Fatal("States closed")
			}
			if s.Up == up {
				return
			}
		case <-deadline:
			t.Fatalf("link did not go up=%v within 15 s", up)
		}
	}
}

// eventCollector is a fleet manager's persistent session on a unit's events:
// QoS 1, CleanSession=false, so the broker keeps what arrives while it is
// away, and it drops duplicates by event id.
type eventCollector struct {
	*recorder
}

func collectEvents(t *testing.T, b *brokertest.Broker, unit string) eventCollector {
	r := newRecorder()
	subscribed := make(chan struct{}, 1)
	b.Client(t, "fleet-admin", func(o *mqtt.ClientOptions) {
		o.SetClientID("fleet-admin-events")
		o.SetCleanSession(false)
		o.SetAutoReconnect(true)
		o.SetConnectRetry(true)
		o.SetMaxReconnectInterval(time.Second)
		o.SetOrderMatters(false)
		o.SetOnConnectHandler(func(c mqtt.Client) {
			if tok := c.Subscribe(topics.Events(unit), 1, r.handle); tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
				select {
				case subscribed <- struct{}{}:
				default:
				}
			}
		})
	})
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("fleet manager could not subscribe to events")
	}
	return eventCollector{r}
}

// ids returns how often each event id arrived.
func (c eventCollector) ids(t *testing.T) map[string]int {
	n := map[string]int{}
	for _, m := range c.all() {
		var ev link.Event
		if err := json.Unmarshal(m.Payload(), &ev); err != nil {
			t.Fatalf("event %q: %v", m.Payload(), err)
		}
		n[ev.ID]++
	}
	return n
}

func (c eventCollector) waitAll(t *testing.T, want []string, d time.Duration) (dups int) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := c.ids(t)
		missing := 0
		for _, id := range want {
			if got[id] == 0 {
				missing++
			}
		}
		if missing == 0 {
			for id, k := range got {
				if !contains(want, id) {
					t.Fatalf("unknown event id %q", id)
				}
				dups += k - 1
			}
			return dups
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events missing %s after the broker returned", missing, len(want), d)
		}
		select {
		case <-c.ch:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// The broker goes away for -broker-down while the unit keeps emitting
// events; once it is back the fleet has every one of them.
func TestEventsSurviveABrokerOutage(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil}})
	events := collectEvents(t, b, "unit-a")
	l := dial(t, unitOpts(t, b, "unit-a"))

	const total = 100
	var sent []string
	var slowest time.Duration
	emit := func(i int) {
		start := time.Now()
		id, err := l.PublishEvent(link.Event{Type: "test", Data: map[string]int{"n": i}})
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		// Blocking on the broker would take paho's write or connect
		// timeout (5 s, 10 s); a loaded CI machine alone can take ~1 s.
		slowest = max(slowest, time.Since(start))
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("PublishEvent blocked %s", d)
		}
		sent = append(sent, id)
	}
	for i := range 10 {
		emit(i)
	}
	b.Stop()
	down := time.Now()
	// 80 events spread over the outage, the rest after it.
	for i := 10; i < 90; i++ {
		emit(i)
		time.Sleep(*brokerDown / 80)
	}
	if l.Connected() {
		t.Error("Connected() = true with the broker stopped")
	}
	b.Restart()
	back := time.Now()
	for i := 90; i < total; i++ {
		emit(i)
	}
	dups := events.waitAll(t, sent, 30*time.Second+*brokerDown)
	t.Logf("broker down %s; all %d events arrived %s after it returned; %d duplicates (same id); slowest PublishEvent %s",
		back.Sub(down).Round(100*time.Millisecond), total, time.Since(back).Round(100*time.Millisecond), dups, slowest.Round(time.Millisecond))
}

// roomd restarts (a new Link on the same store directory) while the broker
// is down: the events the old one queued are delivered by the new one.
func TestQueuedEventsSurviveARestartOfRoomd(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil}})
	events := collectEvents(t, b, "unit-a")
	o := unitOpts(t, b, "unit-a")
	l := dial(t, o)

	b.Stop()
	waitState(t, l, false)
	var sent []string
	for i := range 30 {
		id, err := l.PublishEvent(link.Event{Type: "queued", Data: i})
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, id)
	}
	l.Close() // not connected: nothing to announce, the queue stays on disk

	queued, _ := filepath.Glob(filepath.Join(o.StoreDir, "o.*.msg"))
	if len(queued) != len(sent) {
		t.Errorf("%d messages in the store, want %d", len(queued), len(sent))
	}
	if fi, err := os.Stat(o.StoreDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("store directory: %v %v, want mode 0700", fi.Mode(), err)
	}

	l2, err := link.Open(o) // the restarted roomd
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l2.Close() })
	b.Restart()
	dups := events.waitAll(t, sent, 30*time.Second)
	t.Logf("all %d queued events arrived after the restart; %d duplicates", len(sent), dups)

	// The broker's PUBACKs empty the queue.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left, _ := filepath.Glob(filepath.Join(o.StoreDir, "o.*.msg"))
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still queued after delivery", len(left))
		}
	}
}

// Payloads carry secrets; the link's log names topics and sizes only.
func TestLogsNoPayloads(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": {"ward-3"}}})
	admin := b.Client(t, "fleet-admin")
	const secret = "wifi-psk-Zq93xx"
	publish(t, admin, topics.DeviceConfig("unit-a"), true, fmt.Sprintf(`{"wifi":{"psk":%q}}`, secret))
	l := dial(t, unitOpts(t, b, "unit-a", "ward-3"))
	publish(t, admin, topics.GroupCmd("ward-3"), false, secret)
	nextMessage(t, l, 5*time.Second)
	nextMessage(t, l, 5*time.Second)
	if _, err := l.PublishEvent(link.Event{Type: "x", Data: secret}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if strings.Contains(logged(t), secret) {
		t.Fatal("a payload reached the log")
	}
	if !strings.Contains(logged(t), topics.DeviceConfig("unit-a")) {
		t.Fatal("the log does not name the topic")
	}
}
