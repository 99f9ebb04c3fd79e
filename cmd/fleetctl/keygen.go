package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

func keygen(_ context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("keygen")
	out := fs.String("out", "", "directory to write fleet.key and fleet.pub into (created 0700 if missing)")
	force := fs.Bool("force", false, "replace an existing key: every unit pinning the old fleet.pub then refuses new configs until it gets the new one")
	caDir := addCADirUsage(fs, "the fleet CA directory, if the fleet has one: keygen warns when it already holds the fleet key [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
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
	warnCAKey(env, caDir, *out)
	keyPath, pubPath, pub, err := manager.GenerateKeys(*out, *force)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintf(env.stdout, "wrote %s (secret: keep it off the units and out of version control)\nwrote %s (install on every unit at enrolment)\nkey id %s\n",
		keyPath, pubPath, fleet.KeyID(pub))
	return nil
}

// warnCAKey warns when the fleet already has its key in a CA folder
// (fleetctl ca init made it, and enrolment gave the units its fleet.pub): a
// key made elsewhere is one they refuse as unknown_key.
func warnCAKey(env *cmdEnv, f *caDirFlag, out string) {
	dir, err := f.resolve()
	if err != nil || dir == "" {
		return // only a warning: a settings file keygen cannot read does not stop it
	}
	caKey := filepath.Join(dir, manager.FleetKeyFile)
	if _, err := os.Stat(caKey); err != nil {
		return
	}
	if same, _ := filepath.Abs(out); same != "" {
		if d, _ := filepath.Abs(dir); d == same {
			return // the "already exists" refusal says it
		}
	}
	env.log.Warn("the fleet CA folder already holds the fleet key, the one its enrolled units trust: a key made here is another one, and configs and commands signed with it are refused as unknown_key; push, cmd and sign use the CA folder's key by default",
		"ca_key", caKey)
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
