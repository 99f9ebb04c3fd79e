package manager

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/fleet"
)

// SignConfigFile signs the config file at path for target as version,
// valid from now for expires, with the key in keyPath. The config must
// parse as TOML: a unit would refuse it whole.
func SignConfigFile(keyPath string, target fleet.Target, version uint64, expires time.Duration, urgent bool, path string, now time.Time) (fleet.Envelope, fleet.ConfigPayload, error) {
	var p fleet.ConfigPayload
	if expires <= 0 {
		return fleet.Envelope{}, p, errors.New("--expires must be positive, e.g. 168h")
	}
	cfg, err := os.ReadFile(path)
	if err != nil {
		return fleet.Envelope{}, p, fmt.Errorf("read config: %w", err)
	}
	if _, err := fleet.ParseTOML(cfg); err != nil {
		return fleet.Envelope{}, p, fmt.Errorf("%s: %w: fix it and sign again", path, err)
	}
	priv, err := fleet.LoadPrivateKey(keyPath)
	if err != nil {
		return fleet.Envelope{}, p, err
	}
	issued := now.UTC().Truncate(time.Second)
	p = fleet.ConfigPayload{Version: version, IssuedAt: issued, ExpiresAt: issued.Add(expires), Target: target, Urgent: urgent, Config: string(cfg)}
	e, err := fleet.SignConfig(priv, p)
	if err != nil {
		return fleet.Envelope{}, p, err
	}
	p.Kind = fleet.KindConfig
	return e, p, nil
}

// SignCommandFile signs command name with args for target, valid from now
// for expires, with the key in keyPath. The nonce is chosen here rather
// than inside fleet.SignCommand so that the sender knows it: units name it
// in their command results.
func SignCommandFile(keyPath string, target fleet.Target, name string, args map[string]json.RawMessage, expires time.Duration, now time.Time) (fleet.Envelope, fleet.CommandPayload, error) {
	p := fleet.CommandPayload{Name: name, Target: target, Args: args}
	if expires <= 0 {
		return fleet.Envelope{}, p, errors.New("--expires must be positive, e.g. 5m")
	}
	if _, err := fleet.ValidateCommand(p.Name, p.Args); err != nil {
		return fleet.Envelope{}, p, err
	}
	priv, err := fleet.LoadPrivateKey(keyPath)
	if err != nil {
		return fleet.Envelope{}, p, err
	}
	p.IssuedAt = now.UTC().Truncate(time.Second)
	p.ExpiresAt = p.IssuedAt.Add(expires)
	p.Nonce = fleet.NewNonce()
	e, err := fleet.SignCommand(priv, p)
	if err != nil {
		return fleet.Envelope{}, p, err
	}
	p.Kind = fleet.KindCommand
	return e, p, nil
}

// GenerateKeys writes a new fleet signing key (FleetKeyFile, 0600) and its
// public key (FleetPubFile) into dir, created 0700 if missing. Without
// force it refuses to replace either: every unit pinning the old public key
// would refuse what the new one signs.
func GenerateKeys(dir string, force bool) (keyPath, pubPath string, pub ed25519.PublicKey, err error) {
	keyPath, pubPath = filepath.Join(dir, FleetKeyFile), filepath.Join(dir, FleetPubFile)
	if !force {
		for _, p := range []string{keyPath, pubPath} {
			if _, err := os.Lstat(p); err == nil {
				return "", "", nil, fmt.Errorf("%s already exists: keep using it, or pass --force to replace the fleet key (units must then be given the new fleet.pub)", p)
			} else if !errors.Is(err, os.ErrNotExist) {
				return "", "", nil, err
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", nil, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	// The private key first: a fleet.pub without its fleet.key would be a
	// key nobody can sign for.
	if err := atomicfile.Write(keyPath, fleet.FormatPrivateKey(priv), 0o600); err != nil {
		return "", "", nil, err
	}
	if err := atomicfile.Write(pubPath, fleet.FormatPublicKey(pub), 0o644); err != nil {
		return "", "", nil, err
	}
	return keyPath, pubPath, pub, nil
}
