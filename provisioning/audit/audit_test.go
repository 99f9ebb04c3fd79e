package audit_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/identity"
)

func newLog(t *testing.T, dir string, o audit.Options) *audit.Log {
	t.Helper()
	k, _, err := identity.LoadOrCreateKey(filepath.Join(dir, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	o.Dir, o.Signer, o.ResetMark = filepath.Join(dir, "audit"), k.Signer(), filepath.Join(dir, audit.ResetFile)
	l, err := audit.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func fill(t *testing.T, l *audit.Log, n int) {
	t.Helper()
	for i := range n {
		if _, err := l.Append(audit.KindCallJoined, map[string]string{"meeting": "m-" + string(rune('a'+i%26)), "e2ee": "false"}); err != nil {
			t.Fatal(err)
		}
	}
}

func readLines(t *testing.T, l *audit.Log, dir string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "audit", audit.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func writeCopy(t *testing.T, lines [][]byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "copy.jsonl")
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(bytes.TrimSuffix(l, []byte("\n")))
		b.WriteByte('\n')
	}
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func verifyFile(t *testing.T, p, device string) audit.Result {
	t.Helper()
	recs, err := audit.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return audit.Verify(recs, device)
}

func TestIntactLogVerifies(t *testing.T) {
	dir := t.TempDir()
	l := newLog(t, dir, audit.Options{})
	fill(t, l, 10)
	res := verifyFile(t, writeCopy(t, readLines(t, l, dir)), l.Device())
	if !res.OK() || res.First != 1 || res.Last != 11 || res.Records != 11 {
		t.Fatalf("intact log: %+v %v", res, res.Problem)
	}
	if l.StartedBecause() != "first_start" {
		t.Errorf("chain started because %q, want first_start", l.StartedBecause())
	}
	// Another unit's id: the chain's key is not its.
	other := verifyFile(t, writeCopy(t, readLines(t, l, dir)), "ku-aaaaaaaaaaaaaaaaaaaa")
	if other.OK() || other.Problem.Kind != audit.NoKey {
		t.Fatalf("log verified as another unit's: %+v", other)
	}
}

// TestTamperedCopyNamesTheRecord tampers with a copy of the unit's log in
// the four ways and checks that verify fails and names the record.
func TestTamperedCopyNamesTheRecord(t *testing.T) {
	dir := t.TempDir()
	l := newLog(t, dir, audit.Options{})
	fill(t, l, 9) // seqs 1..10
	lines := readLines(t, l, dir)
	dev := l.Device()
	clone := func() [][]byte {
		out := make([][]byte, len(lines))
		for i := range lines {
			out[i] = bytes.Clone(lines[i])
		}
		return out
	}
	cases := []struct {
		name   string
		tamper func([][]byte) [][]byte
		kind   string
		seq    uint64
	}{
		{"edited", func(ls [][]byte) [][]byte {
			ls[4] = bytes.Replace(ls[4], []byte(`"e2ee":"false"`), []byte(`"e2ee":"true"`), 1)
			return ls
		}, audit.Edited, 5},
		{"deleted", func(ls [][]byte) [][]byte {
			return append(ls[:6:6], ls[7:]...) // seq 7
		}, audit.Deleted, 7},
		{"reordered", func(ls [][]byte) [][]byte {
			ls[2], ls[3] = ls[3], ls[2] // seqs 3 and 4
			return ls
		}, audit.Reordered, 3},
		{"inserted", func(ls [][]byte) [][]byte {
			// A record written to look like the unit's, seq and prev
			// copied from the one it pretends to be.
			forged := bytes.Replace(ls[5], []byte(`"kind":"call_joined"`), []byte(`"kind":"privacy_on"`), 1)
			return append(ls[:5:5], append([][]byte{forged}, ls[5:]...)...)
		}, audit.Inserted, 6},
		{"inserted copy", func(ls [][]byte) [][]byte {
			return append(ls[:8:8], append([][]byte{ls[2]}, ls[8:]...)...)
		}, audit.Inserted, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ls := c.tamper(clone())
			if bytes.Equal(bytes.Join(ls, nil), bytes.Join(lines, nil)) {
				t.Fatal("the tamper changed nothing")
			}
			res := verifyFile(t, writeCopy(t, ls), dev)
			if res.OK() {
				t.Fatalf("tampered log verified: %+v", res)
			}
			if res.Problem.Kind != c.kind || res.Problem.Seq != c.seq {
				t.Fatalf("problem %+v, want %s at seq %d", res.Problem, c.kind, c.seq)
			}
			if !strings.Contains(res.Problem.Message, c.kind) {
				t.Errorf("message %q does not say %s", res.Problem.Message, c.kind)
			}
			t.Logf("%s: %s", c.name, res.Problem.Message)
		})
	}
	// Cutting records off the front is a deletion too.
	res := verifyFile(t, writeCopy(t, clone()[3:]), dev)
	if res.OK() || res.Problem.Kind != audit.Deleted {
		t.Fatalf("log without its first records: %+v", res)
	}
}

func TestPruneLeavesACheckpointThatVerifies(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	l := newLog(t, dir, audit.Options{Retention: 48 * time.Hour, Now: clock})
	fill(t, l, 5) // day 0: seqs 1..6
	now = now.Add(36 * time.Hour)
	fill(t, l, 5) // day 1.5: seqs 7..11
	now = now.Add(24 * time.Hour)
	fill(t, l, 1) // day 2.5: the day-0 records are past 48 h
	recs := l.Records()
	if recs[0].Seq != 7 {
		t.Fatalf("after the age prune the log starts at seq %d, want 7", recs[0].Seq)
	}
	cp := recs[len(recs)-1]
	if cp.Kind != audit.KindCheckpoint || cp.Fields["pruned_through"] != "6" || cp.Fields["policy"] != "age" {
		t.Fatalf("last record %+v, want a checkpoint through 6 by age", cp)
	}
	res := verifyFile(t, filepath.Join(dir, "audit", audit.LogFile), l.Device())
	if !res.OK() || res.First != 7 || res.Pruned != 6 {
		t.Fatalf("pruned log: %+v %v", res, res.Problem)
	}
	// Size: a small bound keeps the file under it.
	dir2 := t.TempDir()
	l2 := newLog(t, dir2, audit.Options{MaxBytes: 8 << 10})
	fill(t, l2, 200)
	if l2.Size() > 8<<10 {
		t.Fatalf("log is %d bytes, bound 8 KiB", l2.Size())
	}
	res = verifyFile(t, filepath.Join(dir2, "audit", audit.LogFile), l2.Device())
	if !res.OK() || res.First == 1 || res.Last < 200 {
		t.Fatalf("size-pruned log: %+v %v", res, res.Problem)
	}
}

func TestFactoryResetStartsANewChain(t *testing.T) {
	dir := t.TempDir()
	l := newLog(t, dir, audit.Options{})
	fill(t, l, 3)
	old := l.Head()
	oldDev := l.Device()
	l.Close()
	// What a reset does: the identity and state go; the mark stays.
	os.RemoveAll(filepath.Join(dir, "identity"))
	os.RemoveAll(filepath.Join(dir, "audit"))
	if err := audit.MarkReset(filepath.Join(dir, audit.ResetFile), time.Now()); err != nil {
		t.Fatal(err)
	}
	l2 := newLog(t, dir, audit.Options{})
	first := l2.Records()[0]
	if first.Seq != 1 || first.Kind != audit.KindChainStarted || first.Fields["reason"] != "factory_reset" {
		t.Fatalf("first record after reset %+v", first)
	}
	if first.Chain == old.Chain || l2.Device() == oldDev {
		t.Fatal("the new chain carries the old chain or identity")
	}
	line := string(first.Line())
	if strings.Contains(line, oldDev) || strings.Contains(line, old.Chain) || strings.Contains(line, old.Hash()) {
		t.Fatalf("the new chain's first record names the old identity: %s", line)
	}
	if _, err := os.Stat(filepath.Join(dir, audit.ResetFile)); !os.IsNotExist(err) {
		t.Fatal("the reset mark stayed after the new chain began")
	}
}

func TestReopenContinuesAndDropsATornRecord(t *testing.T) {
	dir := t.TempDir()
	l := newLog(t, dir, audit.Options{})
	fill(t, l, 3)
	l.Close()
	p := filepath.Join(dir, "audit", audit.LogFile)
	f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"chain":"x","seq":5,"ti`) // a crash mid-write
	f.Close()
	l2 := newLog(t, dir, audit.Options{})
	if _, err := l2.Append(audit.KindMuteOn, nil); err != nil {
		t.Fatal(err)
	}
	res := verifyFile(t, p, l2.Device())
	if !res.OK() || res.Last != 5 || l2.StartedBecause() != "" {
		t.Fatalf("reopened log: %+v %v (started %q)", res, res.Problem, l2.StartedBecause())
	}
}

func TestCleanKeepsSecretsOut(t *testing.T) {
	for in, bad := range map[string]string{
		"join refused by https://user:pa55word@sfu.example.org/rtc?access_token=abc": "pa55word",
		"token eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.abcdefghijkl":    "eyJhbGci",
		"far end at 192.0.2.44:5000 dropped":                                         "192.0.2.44",
	} {
		if out := audit.Clean(in); strings.Contains(out, bad) || strings.Contains(out, "access_token") {
			t.Errorf("Clean(%q) = %q", in, out)
		}
	}
	if got := audit.Clean("https://sfu.example.org/rtc?x=1"); got != "https://sfu.example.org" {
		t.Errorf("Clean kept %q", got)
	}
}

func TestGaps(t *testing.T) {
	g := audit.Gaps([]uint64{1, 2, 4, 5, 8}, 1, 10)
	want := []audit.Gap{{3, 3}, {6, 7}, {9, 10}}
	if len(g) != len(want) {
		t.Fatalf("gaps %v, want %v", g, want)
	}
	for i := range g {
		if g[i] != want[i] {
			t.Fatalf("gaps %v, want %v", g, want)
		}
	}
}
