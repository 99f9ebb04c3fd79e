package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/network"
)

// TestNetworkFromFleetConfig: the fleet sets the unit's network; the keyfiles
// reach NetworkManager's directory through the root helper
// (roomd --apply-network); a config NetworkManager cannot bring up rolls
// back to the previous profiles; no secret shows anywhere but the keyfile.
//
// NetworkManager itself cannot run here (it would take over this machine's
// network), so the helper runs a stand-in nmcli that follows nmcli's
// contract: exit 0 on success, non-zero with "Error: ..." on stderr when a
// connection does not come up (here: any SSID named "Broken"). The
// keyfiles themselves are checked with the real nmcli --offline in
// provisioning/network.
func TestNetworkFromFleetConfig(t *testing.T) {
	f := newFleetSide(t)
	dir := t.TempDir()
	spool, nmDir := filepath.Join(dir, "spool"), filepath.Join(dir, "system-connections")
	if err := os.MkdirAll(nmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A profile the image installed: roomd must never touch it.
	foreign := filepath.Join(nmDir, "Wired connection 1.nmconnection")
	if err := os.WriteFile(foreign, []byte("[connection]\nid=Wired connection 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nmcli := filepath.Join(dir, "nmcli")
	script := "#!/bin/sh\ncase \"$*\" in *\"connection up id konsult-wifi-\"*)\n" +
		"  f=\"" + nmDir + "/${6}.nmconnection\"\n" +
		"  if grep -q '^ssid=Broken' \"$f\"; then echo 'Error: Connection activation failed: (7) Secrets were required, but not provided.' >&2; exit 4; fi;;\nesac\nexit 0\n"
	if err := os.WriteFile(nmcli, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// The root helper, as konsult-network.path runs it on every request.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		last := ""
		for ctx.Err() == nil {
			b, _ := os.ReadFile(filepath.Join(spool, network.RequestFile))
			if s := string(b); s != "" && s != last {
				last = s
				_ = network.RunHelper(ctx, spool, nmDir, nmcli, -1)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	cfg := f.unitConfig(filepath.Join(dir, "state")) + "[unit]\nnetwork_dir = " + quote(spool) + "\nnetwork_apply = \"helper\"\n"
	u := startUnit(t, cfg)
	f.WaitEvent(fleet.EventStarted, 10*time.Second)

	const goodPSK, brokenPSK, shortPSK, peapPass = "correct horse battery", "another secret phrase", "tiny1", "peap-Passw0rd-xyz"
	f.push(signed{version: 1, target: devTarget, toml: `[network.ethernet]
method = "dhcp"
[[network.wifi]]
ssid = "Clinic-Rooms"
security = "wpa2-personal"
psk = "` + goodPSK + `"
`})
	f.WaitEvent(fleet.EventConfigApplied, 20*time.Second)
	wifi := filepath.Join(nmDir, "konsult-wifi-0.nmconnection")
	b, err := os.ReadFile(wifi)
	if err != nil || !strings.Contains(string(b), "ssid=Clinic-Rooms") || !strings.Contains(string(b), "psk="+goodPSK) {
		t.Fatalf("Wi-Fi keyfile in NetworkManager's directory: %v\n%s", err, b)
	}
	for _, p := range []string{wifi, filepath.Join(nmDir, "konsult-eth0.nmconnection")} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; NetworkManager needs 0600", p, err, fi.Mode())
		}
	}
	var raw map[string]any
	if err := u.api.Status(context.Background(), &raw); err != nil {
		t.Fatal(err)
	}
	n, _ := raw["network"].(map[string]any)
	w, _ := n["wifi"].([]any)
	if len(w) != 1 || w[0].(map[string]any)["psk"] != "(set)" || w[0].(map[string]any)["ssid"] != "Clinic-Rooms" {
		t.Fatalf("status network section: %v", raw["network"])
	}

	// NetworkManager cannot bring the next one up: the unit goes back to
	// the profiles it had.
	f.push(signed{version: 2, target: devTarget, toml: `[[network.wifi]]
ssid = "Broken"
security = "wpa3-personal"
psk = "` + brokenPSK + `"
`})
	rb := f.WaitEvent(fleet.EventConfigRolledBack, 60*time.Second)
	if !strings.Contains(rb.Raw, "NetworkManager") {
		t.Fatalf("rollback reason does not name NetworkManager: %s", rb.Raw)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ = os.ReadFile(wifi)
		_, ethErr := os.Stat(filepath.Join(nmDir, "konsult-eth0.nmconnection"))
		if strings.Contains(string(b), "ssid=Clinic-Rooms") && ethErr == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("previous profiles not restored after the rollback:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Bad input: refused whole, the reason names the key, not the value.
	f.push(signed{version: 3, target: devTarget, toml: `[[network.wifi]]
ssid = "Clinic-Rooms"
security = "wpa2-personal"
psk = "` + shortPSK + `"
[[network.wifi]]
ssid = "Clinic-Staff"
security = "enterprise"
eap = "peap"
identity = "room-1"
password = "` + peapPass + `"
`})
	rej := f.WaitEvent(fleet.EventConfigRejected, 10*time.Second)
	if !strings.Contains(rej.Raw, "network.wifi[0].psk") || !strings.Contains(rej.Raw, "ca_cert") {
		t.Fatalf("rejection does not name the keys to fix: %s", rej.Raw)
	}
	if b, _ := os.ReadFile(foreign); !strings.Contains(string(b), "Wired connection 1") {
		t.Fatal("roomd touched a profile that is not its own")
	}

	// Invariant 7: no secret in events, status, reported state or logs.
	var seen strings.Builder
	for _, e := range f.Events() {
		seen.WriteString(e.Raw)
	}
	for _, v := range f.Retained() {
		seen.Write(v)
	}
	var stRaw map[string]any
	_ = u.api.Status(context.Background(), &stRaw)
	st := fmt.Sprint(stRaw)
	for _, secret := range []string{goodPSK, brokenPSK, shortPSK, peapPass} {
		for where, text := range map[string]string{"fleet messages": seen.String(), "local status": st, "roomd log": u.logs.String()} {
			if strings.Contains(text, secret) {
				t.Errorf("secret %q appears in the %s", secret, where)
			}
		}
	}
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"` }
