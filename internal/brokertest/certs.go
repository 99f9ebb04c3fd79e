package brokertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/konsult/konsult/provisioning/ca"
)

// KindTestUnit is the ledger kind of a unit certificate brokertest issues.
// The fleet CA issues ca.KindUnit only to the device id of the unit's own
// key (enrolment); tests name their units ("room-11"), so their
// certificates are the same client certificates under this kind. A test
// that needs a real unit certificate enrols the unit.
const KindTestUnit = "test-unit"

// pki is the fleet CA (provisioning/ca) that issues the broker's and the
// clients' certificates, and the copies the broker reads.
type pki struct {
	dir    string
	ca     *ca.CA
	CAFile string
}

// newPKI uses c, a fleet CA (fleetctl ca init), or makes a throwaway one
// in dir with ca.Init. Its certificate is copied next to the config, as an
// installer copies it to /etc/mosquitto/konsult: the CA directory itself is
// private.
func newPKI(dir string, c *ca.CA) (*pki, error) {
	if c == nil {
		var err error
		if c, err = ca.Init(filepath.Join(dir, "fleet-ca"), "konsult test fleet CA"); err != nil {
			return nil, fmt.Errorf("brokertest: %w", err)
		}
	}
	p := &pki{dir: dir, ca: c, CAFile: filepath.Join(dir, "ca.crt")}
	if err := os.WriteFile(p.CAFile, c.CertPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("brokertest: %w", err)
	}
	return p, nil
}

// writeCRL copies the CA's revocation list to path, where Mosquitto loads
// it: at every (re)start, since Mosquitto reads crlfile only when it starts
// (a SIGHUP does not reload it in 2.0), so a revocation takes effect at the
// next Restart as it does at the broker's next restart in production.
func (p *pki) writeCRL(path string) error {
	b, err := os.ReadFile(filepath.Join(p.ca.Dir, ca.CRLFile))
	if err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	return nil
}

// tool issues the broker's server certificate or the fleet manager's as
// fleetctl ca init does.
func (p *pki) tool(kind, name string, hosts []string) (certFile, keyFile string, err error) {
	certFile, keyFile, err = p.ca.IssueWithKey(kind, name, hosts, p.dir)
	if err != nil {
		return "", "", fmt.Errorf("brokertest: %w", err)
	}
	return certFile, keyFile, nil
}

// units issues a client certificate to each name in one ledger update (a
// benchmark starts thousands) and writes name.crt and name.key.
func (p *pki) units(names []string) (map[string]Identity, error) {
	type pending struct {
		key  *ecdsa.PrivateKey
		cert []byte
	}
	issued := make(map[string]*pending, len(names))
	err := p.ca.Update(func(l *ca.Ledger) error {
		for _, n := range names {
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return fmt.Errorf("key for %s: %w", n, err)
			}
			cert, err := p.ca.Issue(l, KindTestUnit, n, &key.PublicKey, nil, ca.UnitLifetime)
			if err != nil {
				return err
			}
			issued[n] = &pending{key, cert}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("brokertest: %w", err)
	}
	ids := make(map[string]Identity, len(names))
	for n, is := range issued {
		keyDER, err := x509.MarshalPKCS8PrivateKey(is.key)
		if err != nil {
			return nil, fmt.Errorf("brokertest: key for %s: %w", n, err)
		}
		id := Identity{Name: n, CertFile: filepath.Join(p.dir, n+".crt"), KeyFile: filepath.Join(p.dir, n+".key")}
		if err := os.WriteFile(id.CertFile, is.cert, 0o644); err != nil {
			return nil, fmt.Errorf("brokertest: %w", err)
		}
		if err := os.WriteFile(id.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
			return nil, fmt.Errorf("brokertest: %w", err)
		}
		ids[n] = id
	}
	return ids, nil
}
