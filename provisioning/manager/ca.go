package manager

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// EnrolCN is the enrolment credential's CN. The "/" keeps it out of every
// %u pattern of the shipped ACL (deploy/mosquitto/acl).
const EnrolCN = "konsult/enrol"

// FleetdCN is the fleet service's CN (deploy/mosquitto/acl: user fleetd).
const FleetdCN = "fleetd"

// FleetKeyFile and FleetPubFile are the fleet signing key and its public
// key in the CA folder: enrolment hands the units this fleet.pub, so this
// fleet.key is the one they trust.
const (
	FleetKeyFile = "fleet.key"
	FleetPubFile = "fleet.pub"
)

// InitResult names what InitCA wrote.
type InitResult struct {
	BrokerDir, AdminDir, EnrolDir string
}

// InitCA creates the fleet CA in dir, the fleet signing key beside it, the
// broker's certificate (for the host of broker, an mqtts:// URL, and
// extraHosts), the fleet manager's certificate and settings file, and the
// units' enrolment bundle.
func InitCA(dir, name, broker string, extraHosts []string) (InitResult, error) {
	host, useTLS, err := BrokerAddr(broker)
	if err != nil || !useTLS {
		return InitResult{}, fmt.Errorf("--broker %q: units reach the broker over TLS: use mqtts://HOST:8883", broker)
	}
	names := []string{strings.Split(host, ":")[0]}
	if h, _, ok := strings.Cut(host, "]"); ok && strings.HasPrefix(h, "[") {
		names = []string{strings.TrimPrefix(h, "[")}
	}
	for _, h := range extraHosts {
		if h = strings.TrimSpace(h); h != "" {
			names = append(names, h)
		}
	}
	c, err := ca.Init(dir, name)
	if err != nil {
		return InitResult{}, err
	}
	// The config-signing key lives with the CA: both are the fleet's trust.
	if _, _, _, err := GenerateKeys(dir, true); err != nil {
		return InitResult{}, err
	}
	r := InitResult{filepath.Join(dir, "broker"), filepath.Join(dir, "admin"), filepath.Join(dir, "enrol")}
	if _, _, err := c.IssueWithKey(ca.KindServer, "server", names, r.BrokerDir); err != nil {
		return r, err
	}
	adminCert, adminKey, err := c.IssueWithKey(ca.KindAdmin, "fleet-admin", nil, r.AdminDir)
	if err != nil {
		return r, err
	}
	// The fleet service's own client certificate (CN fleetd, whose ACL
	// lines are its own), in a folder of its own to copy to its server.
	if _, _, err := c.IssueWithKey(ca.KindAdmin, FleetdCN, nil, filepath.Join(dir, "fleetd")); err != nil {
		return r, err
	}
	enrolCert, enrolKey, err := c.IssueWithKey(ca.KindEnrol, EnrolCN, nil, r.EnrolDir)
	if err != nil {
		return r, err
	}
	acl, err := link.ACL(nil, "fleet-admin")
	if err != nil {
		return r, err
	}
	crl, err := os.ReadFile(filepath.Join(dir, ca.CRLFile))
	if err != nil {
		return r, err
	}
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{filepath.Join(r.BrokerDir, "ca.crt"), c.CertPEM(), 0o644},
		{filepath.Join(r.BrokerDir, "crl.pem"), crl, 0o644},
		{filepath.Join(r.BrokerDir, "acl"), []byte(acl), 0o644},
		{filepath.Join(r.AdminDir, "ca.crt"), c.CertPEM(), 0o644},
		// ca_dir: the settings file knows its CA folder, so push and cmd
		// sign with the fleet.key the enrolled units trust by default.
		{filepath.Join(r.AdminDir, "fleetctl.toml"), fmt.Appendf(nil,
			"# fleetctl settings for this fleet (fleetctl ca init): the broker's listener for the fleet manager\nbroker = %q\nca = \"ca.crt\"\ncert = %q\ncert_key = %q\nca_dir = \"..\"\n",
			WithPort(broker, ManagerPort), filepath.Base(adminCert), filepath.Base(adminKey)), 0o600},
		{filepath.Join(r.EnrolDir, "ca.crt"), c.CertPEM(), 0o644},
		{filepath.Join(r.EnrolDir, "roomd-fleet.toml"), fmt.Appendf(nil,
			"# The [fleet] section every new unit ships with (fleetctl ca init).\n# Copy this directory to /etc/konsult/enrol on the unit or image.\n[fleet]\nbroker = %q\nca_file = \"/etc/konsult/enrol/ca.crt\"\nenrol_cert = \"/etc/konsult/enrol/%s\"\nenrol_key = \"/etc/konsult/enrol/%s\"\n",
			broker, filepath.Base(enrolCert), filepath.Base(enrolKey)), 0o644},
	}
	for _, f := range files {
		if err := atomicfile.Write(f.path, f.data, f.mode); err != nil {
			return r, err
		}
	}
	return r, nil
}

// CopyCRL copies the CA's revocation list to out (if set) and returns
// where it now is.
func CopyCRL(c *ca.CA, out string) (string, error) {
	src := filepath.Join(c.Dir, ca.CRLFile)
	if out == "" {
		return src, nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(out, b, 0o644); err != nil {
		return "", err
	}
	return out, nil
}

// CheckFleetKey refuses an envelope that enrolled units would refuse as
// unknown_key: one not signed by the CA folder's fleet key, the key
// enrolment gave them. Publishing it would leave a retained config on the
// broker that no unit can verify. A CA folder without fleet.pub (a CA made
// by hand, not by fleetctl ca init) names no key, and nothing is checked.
func CheckFleetKey(e fleet.Envelope, caDir string) error {
	path := filepath.Join(caDir, FleetPubFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	pubs, err := fleet.LoadPublicKeys(path)
	if err != nil {
		return fmt.Errorf("the CA folder's fleet key: %w", err)
	}
	if len(pubs) == 0 {
		return fmt.Errorf("%s holds no public key: fleetctl ca init writes it", path)
	}
	for _, p := range pubs {
		if fleet.KeyID(p) == e.KeyID {
			return nil
		}
	}
	return fmt.Errorf("signed with key %s, but the units enrolled from %s trust only %s (%s): they would refuse it as unknown_key; sign with %s (or leave --key out: it defaults to it)",
		e.KeyID, caDir, fleet.KeyID(pubs[0]), path, filepath.Join(caDir, FleetKeyFile))
}
