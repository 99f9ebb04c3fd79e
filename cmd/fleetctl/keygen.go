package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/konsult/konsult/internal/atomicfile"
	"os"
	"path/filepath"

	"github.com/konsult/konsult/provisioning/fleet"
)

func keygen(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("keygen")
	out := fs.String("out", "", "directory to write fleet.key and fleet.pub into (created 0700 if missing)")
	force := fs.Bool("force", false, "replace an existing key: every unit pinning the old fleet.pub then refuses new configs until it gets the new one")
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if *out == "" {
		return errors.New("keygen: --out is required: name the directory for fleet.key and fleet.pub")
	}
	if len(pos) > 0 {
		return fmt.Errorf("keygen: unexpected argument %q: keygen takes only flags", pos[0])
	}
	keyPath, pubPath := filepath.Join(*out, "fleet.key"), filepath.Join(*out, "fleet.pub")
	if !*force {
		for _, p := range []string{keyPath, pubPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("keygen: %s already exists: keep using it, or pass --force to replace the fleet key (units must then be given the new fleet.pub)", p)
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("keygen: %w", err)
			}
		}
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	// The private key first: a fleet.pub without its fleet.key would be a
	// key nobody can sign for.
	if err := writeFileAtomic(keyPath, fleet.FormatPrivateKey(priv), 0o600); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := writeFileAtomic(pubPath, fleet.FormatPublicKey(pub), 0o644); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintf(env.stdout, "wrote %s (secret: keep it off the units and out of version control)\nwrote %s (install on every unit at enrolment)\nkey id %s\n",
		keyPath, pubPath, fleet.KeyID(pub))
	return nil
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	return atomicfile.Write(path, data, perm)
}

func helpIsNil(err error) error {
	if errors.Is(err, errHelpShown) {
		return nil
	}
	return err
}
