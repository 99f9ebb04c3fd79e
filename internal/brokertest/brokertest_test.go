package brokertest_test

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/deploy/mosquitto"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// The broker runs the shipped configuration: client certificates are
// required, and retained messages survive Stop/Restart on the same port.
func TestBrokerRequiresCertificatesAndPersists(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil}})

	noCert := &tls.Config{RootCAs: b.CertPool()}
	if c, err := tls.Dial("tcp", b.Addr(), noCert); err == nil {
		// TLS 1.3 reports the missing certificate on the first read.
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if err == nil {
			t.Fatal("broker accepted a client without a certificate")
		}
	}

	admin := b.Client(t, "fleet-admin")
	tok := admin.Publish("konsult/device/unit-a/config", 1, true, "v1")
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	admin.Disconnect(100)

	b.Stop()
	if b.Running() {
		t.Fatal("still running after Stop")
	}
	b.Restart()

	got := make(chan string, 1)
	unit := b.Client(t, "unit-a")
	unit.Subscribe("konsult/device/unit-a/config", 1, func(_ mqtt.Client, m mqtt.Message) {
		got <- string(m.Payload())
	})
	select {
	case p := <-got:
		if p != "v1" {
			t.Fatalf("retained config after restart = %q, want v1", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("retained config lost across a broker restart")
	}
}

// The test broker's config is the shipped one with paths and port replaced.
func TestConfIsShippedConf(t *testing.T) {
	for _, want := range []string{"require_certificate true", "use_identity_as_username true", "allow_anonymous false", "persistence true"} {
		if !strings.Contains(mosquitto.Conf, "\n"+want+"\n") {
			t.Errorf("shipped mosquitto.conf lacks %q", want)
		}
	}
}

// The size limits of the shipped config pass the largest legitimate
// message, a signed config envelope of fleet.MaxEnvelopeSize, and refuse
// one byte more; client certificates are required on both listeners.
func TestLargestLegitimateMessagePasses(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil}})
	noCert := &tls.Config{RootCAs: b.CertPool()}
	if c, err := tls.Dial("tcp", b.SharedAddr(), noCert); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if err == nil {
			t.Fatal("the shared listener accepted a client without a certificate")
		}
	}
	admin := b.Client(t, "fleet-admin")
	topics := link.Topics{}
	max, over := topics.DeviceConfig("unit-a"), topics.DeviceConfig("unit-b")
	for topic, n := range map[string]int{max: fleet.MaxEnvelopeSize, over: fleet.MaxEnvelopeSize + 1} {
		if tok := admin.Publish(topic, 1, true, make([]byte, n)); !tok.WaitTimeout(10 * time.Second) {
			t.Fatalf("publish %d bytes: no PUBACK", n)
		}
	}
	got := make(chan string, 4)
	reader := b.Client(t, "fleet-admin")
	reader.Subscribe(topics.AllDevices(link.DeviceConfig), 1, func(_ mqtt.Client, m mqtt.Message) {
		got <- m.Topic()
	}).Wait()
	select {
	case tp := <-got:
		if tp != max {
			t.Fatalf("retained %s, the one over the limit", tp)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the %d-byte config was not kept", fleet.MaxEnvelopeSize)
	}
	select {
	case tp := <-got:
		t.Fatalf("also retained %s, over the limit", tp)
	case <-time.After(time.Second):
	}
}

// The fleet CA (provisioning/ca) issues every certificate into its ledger,
// and the broker loads its revocation list at each start: a revoked unit is
// refused after a restart, the others are not.
func TestCertificatesComeFromTheFleetCA(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Units: map[string][]string{"unit-a": nil, "unit-b": nil}})
	l, err := b.CA().Ledger()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, is := range l.Issued {
		kinds[is.Name] = is.Kind
	}
	for name, kind := range map[string]string{"server": ca.KindServer, "fleet-admin": ca.KindAdmin, "unit-a": brokertest.KindTestUnit, "unit-b": brokertest.KindTestUnit} {
		if kinds[name] != kind {
			t.Errorf("ledger: %s is %q, want %q", name, kinds[name], kind)
		}
	}
	if !accepted(t, b, "unit-b") {
		t.Fatal("unit-b refused before it was revoked")
	}
	if _, err := b.CA().Revoke("unit-b", "test"); err != nil {
		t.Fatal(err)
	}
	b.Stop()
	b.Restart()
	if accepted(t, b, "unit-b") {
		t.Fatal("the broker accepted unit-b's revoked certificate after a restart")
	}
	if !accepted(t, b, "unit-a") {
		t.Fatal("revoking unit-b shut unit-a out")
	}
}

// accepted reports whether the units' listener completes a TLS session
// with name's certificate: a refused client certificate shows on the first
// read (TLS 1.3), an accepted one reads nothing until the deadline.
func accepted(t *testing.T, b *brokertest.Broker, name string) bool {
	t.Helper()
	c, err := tls.Dial("tcp", b.Addr(), b.TLSConfig(name))
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
