package audit_test

import (
	"path/filepath"
	"testing"

	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/identity"
)

// BenchmarkAppend is one record: signed (ECDSA P-256), hashed, written and
// fsynced.
func BenchmarkAppend(b *testing.B) {
	dir := b.TempDir()
	k, _, err := identity.LoadOrCreateKey(filepath.Join(dir, "identity"))
	if err != nil {
		b.Fatal(err)
	}
	l, err := audit.Open(audit.Options{Dir: filepath.Join(dir, "audit"), Signer: k.Signer()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	f := map[string]string{"meeting": "m-1", "e2ee": "false"}
	b.ResetTimer()
	for b.Loop() {
		if _, err := l.Append(audit.KindCallJoined, f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify10k verifies a chain of 10,000 records.
func BenchmarkVerify10k(b *testing.B) {
	dir := b.TempDir()
	k, _, _ := identity.LoadOrCreateKey(filepath.Join(dir, "identity"))
	l, err := audit.Open(audit.Options{Dir: filepath.Join(dir, "audit"), Signer: k.Signer(), MaxBytes: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	for range 9999 {
		l.Append(audit.KindMuteOn, nil)
	}
	recs := l.Records()
	b.ResetTimer()
	for b.Loop() {
		if res := audit.Verify(recs, l.Device()); !res.OK() {
			b.Fatal(res.Problem)
		}
	}
}
