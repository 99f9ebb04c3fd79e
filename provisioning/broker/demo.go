package broker

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/fleet"
)

// DemoAddr is where the --sim demo fleet's broker listens when it can.
const DemoAddr = "127.0.0.1:1883"

// Demo is roomd --sim's fleet out of the box: the embedded broker, a fleet
// signing key and a fleetctl settings file for it, so `fleetctl --config
// Settings status` works with nothing installed.
type Demo struct {
	*Broker
	KeyFile  string // the demo fleet's signing key (0600)
	Settings string // fleetctl's settings for the demo broker
}

// StartDemo starts the broker on DemoAddr (or a free loopback port if that
// is taken) and keeps the demo fleet's key pair and fleetctl settings in
// dir, reusing a key made before.
func StartDemo(dir string) (*Demo, error) {
	b, err := Start(DemoAddr)
	if err != nil {
		if b, err = Start("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("fleet demo: %w", err)
		}
	}
	d := &Demo{Broker: b, KeyFile: filepath.Join(dir, "fleet.key"), Settings: filepath.Join(dir, "fleetctl.toml")}
	if err := d.writeFiles(dir); err != nil {
		_ = b.Close()
		return nil, err
	}
	return d, nil
}

func (d *Demo) writeFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("fleet demo: %w", err)
	}
	priv, err := fleet.LoadPrivateKey(d.KeyFile)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, err = ed25519.GenerateKey(rand.Reader)
		if err == nil {
			err = atomicfile.Write(d.KeyFile, fleet.FormatPrivateKey(priv), 0o600)
		}
	}
	if err != nil {
		return fmt.Errorf("fleet demo key: %w: delete %s to make a new one", err, dir)
	}
	pub := priv.Public().(ed25519.PublicKey)
	if err := atomicfile.Write(filepath.Join(dir, "fleet.pub"), fleet.FormatPublicKey(pub), 0o644); err != nil {
		return fmt.Errorf("fleet demo: %w", err)
	}
	text := fmt.Sprintf("# fleetctl settings for the roomd --sim demo (written by roomd)\nbroker = %q\n", d.URL())
	if err := atomicfile.Write(d.Settings, []byte(text), 0o600); err != nil {
		return fmt.Errorf("fleet demo: %w", err)
	}
	return nil
}
