package network

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const oneWiFi = "[[network.wifi]]\nssid = \"Clinic-Rooms\"\nsecurity = \"wpa2-personal\"\npsk = \"correct horse battery\"\n"

const ethernet = "[network.ethernet]\nmethod = \"dhcp\"\n"

const twoWiFi = oneWiFi + "[[network.wifi]]\nssid = \"Clinic-Spare\"\nsecurity = \"wpa2-personal\"\npsk = \"another secret phrase\"\n"

// Without the helper (--sim) the Applier only renders into its folder; a
// section that was never managed touches nothing, and dropping a managed
// one removes konsult's profiles.
func TestApplierRenderOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "network")
	a := &Applier{Dir: dir}
	ctx := context.Background()
	if err := a.Apply(ctx, mustDecode(t, ""), Identity{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("an unmanaged section made the folder: %v", err)
	}
	if err := a.Apply(ctx, mustDecode(t, twoWiFi), Identity{}); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); strings.Join(got, " ") != "konsult-wifi-0.nmconnection konsult-wifi-1.nmconnection" {
		t.Fatalf("rendered %v", got)
	}
	if err := a.Apply(ctx, mustDecode(t, twoWiFi), Identity{}); err != nil {
		t.Fatalf("the same section again: %v", err)
	}
	if err := a.Apply(ctx, mustDecode(t, ""), Identity{}); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Fatalf("after the section went: %v", got)
	}
}

// With the helper, a profile NetworkManager refuses fails the apply and
// puts the previous profiles back in both folders.
func TestApplierRollsBackWhenNetworkManagerRefuses(t *testing.T) {
	dir := t.TempDir()
	spool, nmDir := filepath.Join(dir, "spool"), filepath.Join(dir, "system-connections")
	if err := os.MkdirAll(nmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	nm, _ := fakeNMCLI(t, "konsult-wifi-0")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	helperDone := make(chan struct{})
	go func() { // konsult-network.path, on every new request
		defer close(helperDone)
		last := ""
		for ctx.Err() == nil {
			b, _ := os.ReadFile(filepath.Join(spool, RequestFile))
			if s := string(b); s != "" && s != last {
				last = s
				_ = RunHelper(ctx, spool, nmDir, nm.Path, -1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() { cancel(); <-helperDone }()

	a := &Applier{Dir: spool, Helper: true}
	if err := a.Apply(ctx, mustDecode(t, ethernet), Identity{}); err != nil {
		t.Fatal(err)
	}
	want := "konsult-eth0.nmconnection"
	if got := listDir(t, nmDir); strings.Join(got, " ") != want {
		t.Fatalf("NetworkManager's folder: %v", got)
	}
	err := a.Apply(ctx, mustDecode(t, oneWiFi), Identity{})
	if err == nil || !strings.Contains(err.Error(), "network: NetworkManager did not take the new settings") {
		t.Fatalf("a refused profile: %v", err)
	}
	if strings.Contains(err.Error(), "correct horse battery") {
		t.Fatalf("the error quotes a passphrase: %v", err)
	}
	for _, d := range []string{spool, nmDir} {
		var got []string
		for _, n := range listDir(t, d) {
			if Owned(n) {
				got = append(got, n)
			}
		}
		if strings.Join(got, " ") != want {
			t.Errorf("%s after the rollback: %v", d, got)
		}
	}
}
