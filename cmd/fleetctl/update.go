package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

const updateNotes = `Each unit checks the signed command (https only, the version, a 64-digit
SHA-256) and, while idle, hands it to its root helper konsult-update, which
downloads the bundle, checks its hash and RAUC signature, refuses an older
version unless it was signed as a downgrade, and installs it into the
inactive slot (docs/UPDATES.md). A unit in a call answers "deferred" and
asks for the update when the call ends. --reboot now reboots into the new
slot as soon as it is installed and the unit is idle; window (the default)
waits for the unit's update.reboot_window. fleetctl status and roomctl
status show where each unit's update stands; a unit whose new slot does not
come up healthy goes back to the old one and reports update_rolled_back
(fleetctl watch --type update_rolled_back).

` + brokerNotes

// updateCmd is fleetctl update: the signed update command.
func updateCmd(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("update")
	keyPath := fs.String("key", "", "the fleet signing key (default: fleet.key in the CA folder, --ca-dir)")
	caDir := addCADirUsage(fs, "the fleet CA directory: its fleet.key is the default --key [$FLEETCTL_CA_DIR, ca_dir in the settings file]")
	tf := addTargetFlags(fs)
	url := fs.String("url", "", "the bundle's https URL (make bundle: dist/konsult-amd64.raucb, served over https)")
	version := fs.String("version", "", "the bundle's version (its manifest's, e.g. 2026.1203.1)")
	sum := fs.String("sha256", "", "the bundle's SHA-256 (sha256sum dist/konsult-amd64.raucb)")
	downgrade := fs.Bool("downgrade", false, "allow a version older than the running one (the bundle must be signed as a downgrade too)")
	reboot := fs.String("reboot", fleet.RebootWindow, `when to reboot into it: "now" (as soon as installed and idle) or "window" (the unit's update.reboot_window)`)
	expires := fs.Duration("expires", 30*time.Minute, "how long units accept the command (at most 1h)")
	wait := fs.Duration("wait", 10*time.Second, "how long to wait for the units' answers (0: send and return)")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) > 0 {
		return fmt.Errorf("update: unexpected argument %q", pos[0])
	}
	if *wait < 0 {
		return errors.New("update: --wait must be 0 or more, e.g. 10s")
	}
	key, err := keyOrDefault(*keyPath, caDir)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if key == "" {
		return errKeyRequired("update")
	}
	target, err := tf.target("update")
	if err != nil {
		return err
	}
	ua := fleet.UpdateArgs{URL: *url, Version: *version, SHA256: *sum, Downgrade: *downgrade, Reboot: *reboot}
	e, p, err := manager.SignCommandFile(key, target, fleet.CommandUpdate, fleet.UpdateArgsJSON(ua), *expires, env.now())
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	return sendSigned(ctx, env, bs, "update", e, p, *wait, *asJSON)
}
