package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleetd"
)

// TestAuditChainSurvivesABrokerOutage: an enrolled unit busy with its
// privacy button while its broker goes away and comes back; the fleet
// service ends with the unit's whole chain, identical to the unit's own
// log, and it verifies. Real roomd, Mosquitto and fleetd.
func TestAuditChainSurvivesABrokerOutage(t *testing.T) {
	f := newEnrolFleet(t)
	svc := startFleetd(t, f, &farend.LiveKit{APIKey: "devkey", APISecret: "fleetd-test-secret-0123456789abcdef"}, "")
	select {
	case <-svc.AuditReady():
	case <-time.After(20 * time.Second):
		t.Fatal("fleetd's audit store did not connect")
	}
	u, id, dir := f.enrolUnit(t, "")
	ctx := context.Background()

	const presses = 60
	for i := range presses {
		if i == presses/3 {
			f.b.Stop()
			t.Log("broker stopped")
		}
		if i == 2*presses/3 {
			f.b.Restart()
			t.Log("broker back")
		}
		// PRIVACY as the local API presses it: back to back, no pause.
		if err := u.api.Action(ctx, "privacy"); err != nil {
			t.Fatal(err)
		}
	}
	u.within(5*time.Second, "privacy off after an even number of presses", func(s status) bool { return !s.Privacy })

	// The unit's own log, and what the fleet holds of it.
	logPath := filepath.Join(dir, "state", "audit", audit.LogFile)
	var unitLines [][]byte
	var head uint64
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		unitLines = bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
		last, err := audit.Parse(unitLines[len(unitLines)-1])
		if err != nil {
			t.Fatal(err)
		}
		head = last.Seq
		if head < presses+3 { // chain start, roomd started, enrolled
			if time.Now().After(deadline) {
				t.Fatalf("the unit's log has %d records for %d privacy changes", head, presses)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		chains, _ := svc.Store().AuditChains(ctx, id)
		var held [][]byte
		if len(chains) == 1 {
			held, _ = svc.Store().AuditLines(ctx, id, chains[0])
		}
		mark, _, ok, _ := svc.Store().AuditMark(ctx, id)
		if len(held) == len(unitLines) && ok && mark.Sent == head && bytes.Equal(bytes.Join(held, []byte("\n")), bytes.Join(unitLines, []byte("\n"))) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleetd holds %d records of the unit's %d (chains %v, mark %+v ok=%v)", len(held), len(unitLines), chains, mark, ok)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if head < presses {
		t.Fatalf("the unit wrote %d records for %d privacy presses", head, presses)
	}
	var recs []audit.Record
	privacy := 0
	for _, l := range unitLines {
		r, _ := audit.Parse(l)
		recs = append(recs, r)
		if r.Kind == audit.KindPrivacyOn || r.Kind == audit.KindPrivacyOff {
			privacy++
		}
	}
	if privacy != presses {
		t.Errorf("%d privacy records for %d presses", privacy, presses)
	}
	if recs[0].Kind != audit.KindChainStarted || recs[0].Fields["reason"] != "first_start" {
		t.Errorf("first record %+v", recs[0])
	}
	res := audit.Verify(recs, id)
	if !res.OK() || res.Last != head {
		t.Fatalf("the fleet's chain does not verify: %+v %v", res, res.Problem)
	}
	t.Logf("fleet holds all %d records; chain verifies, signed by %s", res.Records, res.Device)

	// The fleet manager's view: fleetctl audit verify on fleetd's database.
	verdict := f.run("audit", "verify", "--unit", id, "--db", svc.DatabasePath())
	if !strings.Contains(verdict, ": OK") || !strings.Contains(verdict, fmt.Sprintf("records 1 to %d verified", head)) {
		t.Fatalf("fleetctl audit verify:\n%s", verdict)
	}
	// A copy of the unit's own log, tampered with four ways.
	swap := func(ls [][]byte, i, j int) [][]byte { ls[i], ls[j] = ls[j], ls[i]; return ls }
	for name, tamper := range map[string]func([][]byte) [][]byte{
		"edited": func(ls [][]byte) [][]byte {
			ls[10] = bytes.Replace(ls[10], []byte("privacy_o"), []byte("mute_o"), 1)
			return ls
		},
		"deleted":   func(ls [][]byte) [][]byte { return append(ls[:20:20], ls[21:]...) },
		"reordered": func(ls [][]byte) [][]byte { return swap(ls, 30, 31) },
		"inserted":  func(ls [][]byte) [][]byte { return append(ls[:40:40], append([][]byte{ls[12]}, ls[40:]...)...) },
	} {
		ls := make([][]byte, len(unitLines))
		for i := range unitLines {
			ls[i] = bytes.Clone(unitLines[i])
		}
		p := filepath.Join(t.TempDir(), name+".jsonl")
		os.WriteFile(p, append(bytes.Join(tamper(ls), []byte("\n")), '\n'), 0o600)
		out, err := f.try("audit", "verify", "--file", p, "--unit", id)
		if err == nil || !strings.Contains(out, "FAILED") || !strings.Contains(out, name) {
			t.Errorf("fleetctl audit verify of a log %s: err=%v\n%s", name, err, out)
		}
	}

	// The privacy report as the fleet manager gets it from the unit.
	rep := f.run("privacy-report", "--unit", id)
	for _, want := range []string{"# Privacy report: unit " + id, "| broker | 127.0.0.1 |", "## Audit log", fmt.Sprintf("%d records written", head)} {
		if !strings.Contains(rep, want) {
			t.Errorf("fleetctl privacy-report lacks %q:\n%s", want, rep)
		}
	}

	// Nothing secret in the log or roomd's output: no key material, no
	// claim code, no URL with credentials.
	claim, _ := os.ReadFile(filepath.Join(f.caDir, "enrol", "konsult-enrol.key"))
	secretish := regexp.MustCompile(`PRIVATE KEY|[a-z]+://[^/\s"]*:[^/\s"]*@|eyJ[a-zA-Z0-9_-]{10,}`)
	for name, text := range map[string][]byte{"audit log": bytes.Join(unitLines, nil), "roomd log": []byte(u.logs.String()), "roomd stdout": []byte(u.stdout.String()),
		"privacy report": []byte(rep), "verify output": []byte(verdict)} {
		if m := secretish.Find(text); m != nil {
			t.Errorf("%s holds %q", name, m)
		}
		if len(claim) > 0 && bytes.Contains(text, bytes.TrimSpace(claim)) {
			t.Errorf("%s holds the enrolment key", name)
		}
	}
}

// fleetdAt runs fleetd on the database in dir until the returned stop.
func fleetdAt(t *testing.T, f *enrolFleet, dir string) (*fleetd.Service, func()) {
	t.Helper()
	conf := fmt.Sprintf("database = %q\nca_dir = %q\n[broker]\nurl = %q\nca = %q\ncert = %q\ncert_key = %q\n[livekit]\napi_key = \"devkey\"\napi_secret = \"fleetd-test-secret-0123456789abcdef\"\n",
		filepath.Join(dir, "fleetd.db"), f.caDir, f.b.SharedURL(), f.b.CAFile(),
		filepath.Join(f.caDir, "fleetd", "fleetd.crt"), filepath.Join(f.caDir, "fleetd", "fleetd.key"))
	path := filepath.Join(dir, "fleetd.toml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := fleetd.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := fleetd.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	select {
	case <-svc.AuditReady():
	case <-time.After(20 * time.Second):
		t.Fatal("fleetd's audit store did not connect")
	}
	return svc, func() { cancel(); <-done; svc.Close() }
}

// TestAuditRecordsWaitForFleetd: fleetd is down while the unit records;
// the broker keeps the records for fleetd's audit session, and fleetd has
// them all once it is back.
func TestAuditRecordsWaitForFleetd(t *testing.T) {
	f := newEnrolFleet(t)
	dir := t.TempDir()
	_, stop := fleetdAt(t, f, dir)
	u, id, udir := f.enrolUnit(t, "")
	stop()
	for range 20 {
		if err := u.api.Action(context.Background(), "mute"); err != nil {
			t.Fatal(err)
		}
	}
	// The unit has recorded the 20 changes and handed everything to the
	// broker before fleetd returns.
	st := u.within(20*time.Second, "all records written and sent", func(s status) bool {
		a := s.Fleet.Audit
		return a != nil && a.Head >= 23 && a.Sent == a.Head
	})
	want := int(st.Fleet.Audit.Head)
	b, err := os.ReadFile(filepath.Join(udir, "state", "audit", audit.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(b, []byte("\n")); n != want {
		t.Fatalf("the unit's log has %d records, its reported head %d", n, want)
	}
	svc, stop := fleetdAt(t, f, dir)
	defer stop()
	ctx := context.Background()
	var held [][]byte
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		chains, _ := svc.Store().AuditChains(ctx, id)
		if len(chains) == 1 {
			held, _ = svc.Store().AuditLines(ctx, id, chains[0])
			if len(held) == want {
				break
			}
		}
	}
	if len(held) != want {
		t.Fatalf("fleetd holds %d of the unit's %d records after being away", len(held), want)
	}
	var recs []audit.Record
	for _, l := range held {
		r, _ := audit.Parse(l)
		recs = append(recs, r)
	}
	if res := audit.Verify(recs, id); !res.OK() {
		t.Fatalf("chain: %v", res.Problem)
	}
}
