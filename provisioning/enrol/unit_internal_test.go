package enrol

import (
	"os"
	"path/filepath"
	"testing"
)

// The config's code wins over the boot partition's, which wins over one
// saved from roomctl enrol; comments and blank lines are not codes.
func TestUnitClaimCodeSources(t *testing.T) {
	dir := t.TempDir()
	boot := filepath.Join(dir, "konsult-claim.txt")
	u, err := OpenUnit(UnitOptions{Dir: filepath.Join(dir, "identity"), ClaimFile: boot})
	if err != nil {
		t.Fatal(err)
	}
	if code, src := u.claimCode(); code != "" || src != "" {
		t.Fatalf("no code anywhere: %q from %q", code, src)
	}
	saved := NewClaimCode()
	if err := u.Enrol(saved); err != nil {
		t.Fatal(err)
	}
	if code, src := u.claimCode(); code != saved || src != "roomctl enrol" {
		t.Fatalf("saved code: %q from %q", code, src)
	}
	if err := os.WriteFile(boot, []byte("# write the code below\n\n  BOOT-CODE  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, src := u.claimCode(); code != "BOOT-CODE" || src != boot {
		t.Fatalf("boot partition: %q from %q", code, src)
	}
	u.o.ClaimCode = "CONFIG-CODE"
	if code, src := u.claimCode(); code != "CONFIG-CODE" || src != "fleet.claim_code" {
		t.Fatalf("config: %q from %q", code, src)
	}
}
