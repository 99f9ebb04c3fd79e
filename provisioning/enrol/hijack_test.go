package enrol_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/identity"
	"github.com/konsult/konsult/provisioning/link"
)

// Issue 14, finding 2: Mosquitto keeps one session per client id across all
// listeners, and a CONNECT with a taken id closes the connection holding it
// and inherits its queued QoS 1 messages. These tests run the attacks
// against the shipped config: every certificate an attacker can have (an
// enrolled unit's of its own, the enrolment credential every image ships)
// tries every client id that could be the victim's, on both listeners.

// openLink connects an enrolled unit as roomd does.
func (f *fleetUnderTest) openLink(t *testing.T, u *unit, dir string) *link.Link {
	t.Helper()
	lk, err := link.Open(link.Options{Broker: f.b.URL(), CAFile: filepath.Join(dir, identity.CAFile),
		CertFile: filepath.Join(dir, identity.CertFile), KeyFile: u.key.Path(), DeviceID: u.id,
		StoreDir: t.TempDir(), MinBackoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lk.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lk.WaitConnected(ctx); err != nil {
		t.Fatalf("victim: %v\n%s", err, f.b.Log())
	}
	return lk
}

// attacker records everything any of its connections receives.
type attacker struct {
	mu   sync.Mutex
	got  []string
	took []string // "addr id" of the connections the broker accepted
}

func (a *attacker) received() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.got...)
}

// try connects with cert/key to every listener with every id, each with a
// persistent session (clean=false) as the victim's own, and subscribes to
// the victim's commands. The connections stay open until the test ends.
func (a *attacker) try(t *testing.T, f *fleetUnderTest, certFile, keyFile string, ids []string, victim string) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.ca.CertPEM())
	for _, addr := range []string{f.b.Addr(), f.b.SharedAddr()} {
		for _, id := range ids {
			o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(id).SetCleanSession(false).
				SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
				SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}).
				SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
					a.mu.Lock()
					a.got = append(a.got, m.Topic()+" "+string(m.Payload()))
					a.mu.Unlock()
				})
			c := mqtt.NewClient(o)
			tok := c.Connect()
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				continue // refused: the attack failed here
			}
			a.mu.Lock()
			a.took = append(a.took, addr+" "+id)
			a.mu.Unlock()
			c.Subscribe(f.topics.DeviceCmd(victim), 1, nil).WaitTimeout(5 * time.Second)
			t.Cleanup(func() { c.Disconnect(50) })
		}
	}
}

// victimIDs are the client ids an attacker would try: the device id (the
// session's key on the units' listener, and the id units used to send),
// and the ids a unit sends while enrolled and while enrolling.
func victimIDs(f *fleetUnderTest, victim string) []string {
	return []string{victim, link.UnitClientID(victim), f.topics.EnrolClientID(victim)}
}

// command publishes a QoS 1 command for id as the fleet manager.
func (f *fleetUnderTest) command(t *testing.T, id, body string) {
	t.Helper()
	admin := f.b.Client(t, f.b.Admin().Name)
	if tok := admin.Publish(f.topics.DeviceCmd(id), 1, false, []byte(body)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish command: %v", tok.Error())
	}
}

// waitCommand waits for body on lk's messages.
func waitCommand(t *testing.T, lk *link.Link, body string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-lk.Messages():
			if m.Kind == link.DeviceCmd && string(m.Payload) == body {
				return
			}
		case <-deadline:
			t.Fatalf("the victim never received its command %q", body)
		}
	}
}

// noDrop fails if lk went down since the last call.
func noDrop(t *testing.T, lk *link.Link, when string) {
	t.Helper()
	for {
		select {
		case s := <-lk.States():
			if !s.Up {
				t.Fatalf("%s: the victim was disconnected: %v", when, s.Err)
			}
		default:
			if !lk.Connected() {
				t.Fatalf("%s: the victim is not connected", when)
			}
			return
		}
	}
}

func drainStates(lk *link.Link) {
	for {
		select {
		case <-lk.States():
		default:
			return
		}
	}
}

// hijack runs the attack with the attacker's certificate: first while the
// victim is online (it must stay connected and get the command sent after
// the attack), then while it is offline with a command queued in its
// session (the attacker must not receive it; the victim must, on its
// return).
func hijack(t *testing.T, f *fleetUnderTest, certFile, keyFile string) {
	victim, dir := f.enrolled(t)
	lk := f.openLink(t, victim, dir)
	time.Sleep(200 * time.Millisecond) // its subscriptions are in place
	drainStates(lk)

	a := &attacker{}
	a.try(t, f, certFile, keyFile, victimIDs(f, victim.id), victim.id)
	time.Sleep(300 * time.Millisecond)
	noDrop(t, lk, "online")
	f.command(t, victim.id, "reboot while online")
	waitCommand(t, lk, "reboot while online")
	noDrop(t, lk, "online, after the command")

	// Offline: the broker queues the command in the victim's session.
	lk.Close()
	time.Sleep(200 * time.Millisecond)
	f.command(t, victim.id, "queued while offline")
	b := &attacker{}
	b.try(t, f, certFile, keyFile, victimIDs(f, victim.id), victim.id)
	time.Sleep(500 * time.Millisecond)
	back := f.openLink(t, victim, dir)
	waitCommand(t, back, "queued while offline")

	for _, got := range append(a.received(), b.received()...) {
		t.Errorf("the attacker received %q", got)
	}
	t.Logf("connections the broker accepted for the attacker (none of them the victim's session): %v %v", a.took, b.took)
}

// (a) Another unit's certificate.
func TestHijackWithOtherUnitsCertificateFails(t *testing.T) {
	f := newFleet(t)
	thief, thiefDir := f.enrolled(t)
	hijack(t, f, filepath.Join(thiefDir, identity.CertFile), thief.key.Path())
}

// (b) The shared enrolment credential, which every image ships.
func TestHijackWithEnrolmentCredentialFails(t *testing.T) {
	f := newFleet(t)
	hijack(t, f, f.enrolCert, f.enrolKey)
}

// (c) Units enrolling at once with the one shared credential keep their
// own connections: a broker that made the credential's CN the client id
// would close one's connection whenever the other connects.
func TestConcurrentEnrolmentsDoNotKickEachOther(t *testing.T) {
	f := newFleet(t)
	const n = 3
	units := make([]*unit, n)
	for i := range units {
		units[i] = f.newUnit(t)
		if err := units[i].c.SetClaimCode(f.newCode(t)); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range units {
		u.waitPhase(t, enrol.PhaseWaiting)
	}
	// Let them sit side by side, as units waiting for approval do.
	time.Sleep(2 * time.Second)
	for _, u := range units {
		req := f.request(t, u.id)
		d, err := enrol.Approve(f.ca, req, nil, f.b.URL(), "k")
		if err != nil {
			t.Fatal(err)
		}
		f.respond(t, u.id, d)
	}
	for _, u := range units {
		select {
		case <-u.done:
		case <-time.After(15 * time.Second):
			t.Fatalf("%s did not enrol; last status %+v", u.id, u.last())
		}
		u.mu.Lock()
		for _, s := range u.statuses {
			if s.Phase == enrol.PhaseConnecting && s.Reason != "" {
				t.Errorf("%s lost its connection while enrolling: %+v", u.id, s)
			}
		}
		u.mu.Unlock()
	}
	if log := f.b.Log(); strings.Contains(log, "already connected, closing old connection") {
		t.Fatalf("the broker closed an enrolling unit's connection for another's:\n%s", log)
	}
}

// (d) The enrolment credential cannot park a 20 MiB retained request on
// the broker (memory, disk and every fleetctl enrol list that reads it).
func TestOversizedEnrolmentRequestIsNotRetained(t *testing.T) {
	f := newFleet(t)
	const id = "ku-bigbigbigbigbigbigbigb"
	cert, err := tls.LoadX509KeyPair(f.enrolCert, f.enrolKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.ca.CertPEM())
	big, _ := json.Marshal(enrol.Request{DeviceID: id, Model: strings.Repeat("x", 20<<20)})
	for _, addr := range []string{f.b.SharedAddr(), f.b.Addr()} {
		o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(f.topics.EnrolClientID(id)).
			SetAutoReconnect(false).SetWriteTimeout(30 * time.Second).
			SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}})
		c := mqtt.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("enrolment credential on %s: %v", addr, tok.Error())
		}
		// The broker may drop the connection instead of acknowledging:
		// either way nothing must be stored.
		c.Publish(f.topics.EnrolRequest(id), 1, true, big).WaitTimeout(30 * time.Second)
		c.Disconnect(50)
	}
	// A legitimate request afterwards still lands, so an empty result
	// below is not a broken subscription.
	small, _ := json.Marshal(enrol.Request{DeviceID: "ku-smallsmallsmallsmalls"})
	o := mqtt.NewClientOptions().AddBroker("ssl://" + f.b.SharedAddr()).SetClientID(f.topics.EnrolClientID("ku-smallsmallsmallsmalls")).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}})
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := c.Publish(f.topics.EnrolRequest("ku-smallsmallsmallsmalls"), 1, true, small); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c.Disconnect(50)

	var mu sync.Mutex
	sizes := map[string]int{}
	admin := f.b.Client(t, f.b.Admin().Name)
	admin.Subscribe(f.topics.AllEnrolRequests(), 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		sizes[m.Topic()] = len(m.Payload())
		mu.Unlock()
	}).Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		_, small := sizes[f.topics.EnrolRequest("ku-smallsmallsmallsmalls")]
		n, large := sizes[f.topics.EnrolRequest(id)]
		mu.Unlock()
		if large {
			t.Fatalf("the broker kept a %d-byte retained enrolment request", n)
		}
		if small {
			time.Sleep(500 * time.Millisecond) // retained messages arrive in one burst
			mu.Lock()
			n, large = sizes[f.topics.EnrolRequest(id)]
			mu.Unlock()
			if large {
				t.Fatalf("the broker kept a %d-byte retained enrolment request", n)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the legitimate request never arrived")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A unit enrols on the fleet broker's host at the enrolment listener's
// port unless fleet.enrol_broker says otherwise.
func TestEnrolBrokerDefault(t *testing.T) {
	for in, want := range map[string]string{
		"mqtts://broker.clinic.example:8883": "mqtts://broker.clinic.example:8884",
		"mqtts://broker.clinic.example":      "mqtts://broker.clinic.example:8884",
		"ssl://[2001:db8::1]:8883":           "ssl://[2001:db8::1]:8884",
		"":                                   "",
	} {
		if got := enrol.EnrolBroker(in); got != want {
			t.Errorf("EnrolBroker(%q) = %q, want %q", in, got, want)
		}
	}
}
