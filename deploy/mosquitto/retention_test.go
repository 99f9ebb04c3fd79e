package mosquitto

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The shipped file's retention options read as written; what a file
// leaves out is Mosquitto's default; a value Mosquitto would refuse names
// the file and the line.
func TestReadRetention(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "mosquitto.conf")
	os.WriteFile(p, []byte(Conf), 0o600)
	o, err := ReadRetention(p)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"persistence": "true", "max_queued_messages": "100000", "max_queued_bytes": "67108864",
		"persistent_client_expiration": "30d", "autosave_interval": "60", "retain_available": "true"} {
		if o[k] != want {
			t.Errorf("%s = %q, want %q", k, o[k], want)
		}
	}
	os.WriteFile(p, []byte("# nothing set\npersistence\ttrue\n"), 0o600)
	if o, err = ReadRetention(p); err != nil || o["persistence"] != "true" || o["max_queued_messages"] != "1000" || o["persistent_client_expiration"] != "" {
		t.Errorf("defaults: %v %v", o, err)
	}
	os.WriteFile(p, []byte("persistence true\n\npersistent_client_expiration 30 days\n"), 0o600)
	if _, err := ReadRetention(p); err == nil || !strings.Contains(err.Error(), p+" line 3") {
		t.Errorf("a bad expiry: %v", err)
	}
	if d, err := ParseExpiry("2w"); err != nil || d != 14*24*time.Hour {
		t.Errorf("2w = %v, %v", d, err)
	}
}
