package fleetd

import (
	"fmt"
	"os"
	"time"

	"github.com/BurntSushi/toml"
)

// ReadRetention reads only [retention] from a fleetd.toml, with fleetd's
// defaults, for the privacy report (fleetctl privacy-report
// --fleetd-config): what fleetd is really told to keep, not what the
// report would assume. It needs none of the rest of the file (no secret
// file, no database), and holds it to the same rules LoadConfig does.
func ReadRetention(path string) (RetentionConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return RetentionConfig{}, fmt.Errorf("fleetd config %s: %w (give the file fleetd runs with, readable by you: it is konsult-fleetd's, see docs/FLEETD.md)", path, err)
	}
	var doc struct {
		Retention RetentionConfig `toml:"retention"`
	}
	if _, err := toml.Decode(string(b), &doc); err != nil {
		return RetentionConfig{}, fmt.Errorf("fleetd config %s is not valid TOML: %w: fix the file (fleetd refuses it too); [retention] takes audit = \"365d\" and records = \"90d\"", path, err)
	}
	r := doc.Retention
	if r.Audit.Duration == 0 {
		r.Audit.Duration = DefaultAuditRetention
	}
	if r.Records.Duration == 0 {
		r.Records.Duration = DefaultRecordRetention
	}
	if r.Audit.Duration < 24*time.Hour || r.Records.Duration < 24*time.Hour {
		return RetentionConfig{}, fmt.Errorf("fleetd config %s: [retention] audit %s, records %s: at least 1d each (fleetd refuses it too)", path, r.Audit.Duration, r.Records.Duration)
	}
	return r, nil
}
