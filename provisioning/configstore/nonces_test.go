package configstore_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/configstore"
	"github.com/konsult/konsult/provisioning/fleet"
)

// The replay guard persisted through the store: a command accepted before a
// restart is refused after it.
func TestReplayGuardSurvivesRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fleet")
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	nonce := fleet.NewNonce()

	s, err := configstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	guard := fleet.NewNonceStore(s.Nonces(), s.SaveNonces)
	if err := guard.Record(nonce, now.Add(5*time.Minute), now); err != nil {
		t.Fatal(err)
	}
	s.Close() // roomd restarts

	s, err = configstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	guard = fleet.NewNonceStore(s.Nonces(), s.SaveNonces)
	if err := guard.Record(nonce, now.Add(5*time.Minute), now.Add(time.Minute)); fleet.ReasonOf(err) != fleet.ReasonReplayed {
		t.Fatalf("same nonce after restart: %v", err)
	}
	// Once the command has expired the nonce is dropped from disk too.
	later := now.Add(time.Hour)
	if err := guard.Record(fleet.NewNonce(), later.Add(time.Minute), later); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Nonces()); n != 1 {
		t.Fatalf("store keeps %d nonces, want 1 (the expired one dropped)", n)
	}
}
