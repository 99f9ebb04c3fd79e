package network

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fakeNMCLI writes a script that logs its arguments and fails `connection
// up` for the ids in fail. No real NetworkManager is involved.
func fakeNMCLI(t *testing.T, fail ...string) (NMCLI, func() []string) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	script := "#!/bin/sh\necho \"$*\" >> " + log + "\n"
	for _, f := range fail {
		script += "[ \"$6\" = " + f + " ] && { echo \"Error: Connection activation failed: $6\" >&2; exit 4; }\n"
	}
	script += "exit 0\n"
	bin := filepath.Join(dir, "nmcli")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return NMCLI{Path: bin, Wait: 5 * time.Second, Env: []string{"FAKE=1"}}, func() []string {
		b, _ := os.ReadFile(log)
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
}

func TestNMCLIActivate(t *testing.T) {
	ids := []string{"konsult-eth0", "konsult-wifi-1", "konsult-wifi-0", "konsult-wifi-2"}
	up := func(id string) string { return "--wait 5 connection up id " + id }
	tests := []struct {
		name    string
		fail    []string
		calls   []string
		wantErr string
	}{
		{"all up: first Wi-Fi wins", nil,
			[]string{"connection reload", up("konsult-eth0"), up("konsult-wifi-1")}, ""},
		{"no cable, Wi-Fi falls through", []string{"konsult-eth0", "konsult-wifi-1"},
			[]string{"connection reload", up("konsult-eth0"), up("konsult-wifi-1"), up("konsult-wifi-0")}, ""},
		{"nothing comes up", ids,
			[]string{"connection reload", up("konsult-eth0"), up("konsult-wifi-1"), up("konsult-wifi-0"), up("konsult-wifi-2")},
			"no connection came up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a Activator
			n, calls := fakeNMCLI(t, tt.fail...)
			a = n
			err := a.Activate(context.Background(), ids)
			if got := calls(); !reflect.DeepEqual(got, tt.calls) {
				t.Errorf("nmcli calls:\n%q\nwant\n%q", got, tt.calls)
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "Connection activation failed: konsult-wifi-2") {
				t.Fatalf("Activate = %v", err)
			}
		})
	}
}

func TestNMCLIActivateRefusesForeignIDs(t *testing.T) {
	n, calls := fakeNMCLI(t)
	if err := n.Activate(context.Background(), []string{"Wired connection 1"}); err == nil {
		t.Fatal("activated a connection that is not konsult's")
	}
	if got := calls(); !reflect.DeepEqual(got, []string{""}) {
		t.Fatalf("calls %q", got)
	}
}

func TestNMCLIReloadFailure(t *testing.T) {
	n := NMCLI{Path: filepath.Join(t.TempDir(), "no-nmcli")}
	err := n.Activate(context.Background(), []string{"konsult-eth0"})
	if err == nil || !strings.Contains(err.Error(), "connection reload") {
		t.Fatalf("Activate with no nmcli = %v", err)
	}
}
