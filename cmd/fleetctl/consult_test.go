package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleetd"
	"github.com/konsult/konsult/provisioning/manager"
)

// consultFleetd serves a fleetd's socket API (no broker needed for it) from
// a config file as packaged.
func consultFleetd(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	c, err := ca.Init(filepath.Join(dir, "ca"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := manager.GenerateKeys(c.Dir, false); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "livekit.secret"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := `database = "db/fleetd.db"
ca_dir = "ca"
patient_url = "https://clinic.example/join"
[broker]
url = "tcp://127.0.0.1:1"
[livekit]
api_key = "APIkey"
api_secret_file = "livekit.secret"
`
	path := filepath.Join(dir, "fleetd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	conf, err := fleetd.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := fleetd.New(conf, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	sock := filepath.Join(dir, "fleetd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: svc.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func fleetctlOut(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), args, &out, &errb)
	return out.String() + errb.String(), err
}

func TestConsultAddListCancelImport(t *testing.T) {
	sock := consultFleetd(t)
	out, err := fleetctlOut(t, "consult", "add", "--fleetd", sock, "--unit", "room-11", "--at", "2026-12-02T10:30", "--for", "30m")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	link := regexp.MustCompile(`https://clinic.example/join#(c-[a-z0-9]+)\.[A-Za-z0-9_-]{43}`).FindStringSubmatch(out)
	if link == nil {
		t.Fatalf("no patient link in %q", out)
	}
	id := link[1]
	out, err = fleetctlOut(t, "consult", "list", "--fleetd", sock, "--all")
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "room-11") {
		t.Fatalf("list: %v: %s", err, out)
	}
	if strings.Contains(out, "#") {
		t.Fatalf("list shows the patient link: %s", out)
	}
	if out, err = fleetctlOut(t, "consult", "cancel", "--fleetd", sock, id); err != nil {
		t.Fatalf("cancel: %v: %s", err, out)
	}
	out, _ = fleetctlOut(t, "consult", "list", "--fleetd", sock, "--all")
	if !strings.Contains(out, "cancelled") {
		t.Fatalf("cancelled one not shown so: %s", out)
	}
	ics := "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n" +
		"BEGIN:VEVENT\r\nUID:booking-1@clinic\r\nDTSTAMP:20261201T080000Z\r\nDTSTART:20261202T093000Z\r\nDTEND:20261202T100000Z\r\nSUMMARY:Jane Patient\r\nLOCATION:room-12\r\nEND:VEVENT\r\n" +
		"BEGIN:VEVENT\r\nUID:booking-2@clinic\r\nDTSTAMP:20261201T080000Z\r\nDTSTART:20261202T110000Z\r\nDURATION:PT20M\r\nX-KONSULT-UNIT:room-13\r\nEND:VEVENT\r\n" +
		"END:VCALENDAR\r\n"
	f := filepath.Join(t.TempDir(), "b.ics")
	os.WriteFile(f, []byte(ics), 0o644)
	out, err = fleetctlOut(t, "consult", "import", "--fleetd", sock, f)
	if err != nil || !strings.Contains(out, "2 added") {
		t.Fatalf("import: %v: %s", err, out)
	}
	// Re-import: moved, cancelled, never booked twice.
	ics2 := strings.Replace(ics, "DTSTART:20261202T093000Z\r\nDTEND:20261202T100000Z", "DTSTART:20261202T094500Z\r\nDTEND:20261202T101500Z", 1)
	ics2 = strings.Replace(ics2, "X-KONSULT-UNIT:room-13\r\n", "X-KONSULT-UNIT:room-13\r\nSTATUS:CANCELLED\r\n", 1)
	os.WriteFile(f, []byte(ics2), 0o644)
	out, err = fleetctlOut(t, "consult", "import", "--fleetd", sock, f)
	if err != nil || !strings.Contains(out, "0 added, 1 moved, 1 cancelled") {
		t.Fatalf("re-import: %v: %s", err, out)
	}
	out, _ = fleetctlOut(t, "consult", "list", "--fleetd", sock, "--all")
	if strings.Contains(out, "Jane") {
		t.Fatalf("the patient's name was kept: %s", out)
	}
	if _, err := fleetctlOut(t, "consult", "list", "--fleetd", filepath.Join(t.TempDir(), "none.sock")); err == nil || !strings.Contains(err.Error(), "is fleetd running") {
		t.Fatalf("no fleetd: %v", err)
	}
}
