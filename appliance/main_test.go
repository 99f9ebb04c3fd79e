package appliance

import (
	"flag"
	"os"
	"testing"
)

// The property test is only worth having with thousands of sequences; raise
// rapid's default of 100 unless the caller chose a number.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("rapid.checks"); f != nil && f.Value.String() == "100" {
		_ = f.Value.Set("5000")
	}
	os.Exit(m.Run())
}
