package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/provisioning/link"
)

// Under a fleet config the broker and certificate files come from its
// [fleet], the identity never does; an enrolled unit keeps its own
// certificates; an empty broker means the demo's, or is refused.
func TestConnectionUnder(t *testing.T) {
	base := Connection{Link: link.Options{DeviceID: "u-1", Groups: []string{"g"}, StoreDir: "/s/link",
		CAFile: "/id/ca.pem", CertFile: "/id/cert.pem", KeyFile: "/id/key.pem"}}
	f := config.Fleet{Broker: "mqtts://b:8883", CAFile: "/etc/ca", CertFile: "/etc/c", KeyFile: "/etc/k",
		ConfirmTimeout: config.Duration{Duration: 30 * time.Second}}

	c, err := connectionUnder(base, f, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Link; l.Broker != f.Broker || l.CAFile != "/etc/ca" || l.CertFile != "/etc/c" || l.KeyFile != "/etc/k" ||
		l.DeviceID != "u-1" || l.StoreDir != "/s/link" || c.ConfirmTimeout != 30*time.Second {
		t.Fatalf("hand-provisioned: %+v", c)
	}
	c, err = connectionUnder(base, f, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Link; l.Broker != f.Broker || l.CAFile != "/id/ca.pem" || l.CertFile != "/id/cert.pem" || l.KeyFile != "/id/key.pem" {
		t.Fatalf("enrolled: %+v", c.Link)
	}
	f.Broker = ""
	if c, err = connectionUnder(base, f, "tcp://127.0.0.1:1883", false); err != nil || c.Link.Broker != "tcp://127.0.0.1:1883" {
		t.Fatalf("demo: %+v %v", c.Link, err)
	}
	if _, err = connectionUnder(base, f, "", false); err == nil || !strings.Contains(err.Error(), "cannot switch the fleet off") {
		t.Fatalf("empty broker: %v", err)
	}
}
