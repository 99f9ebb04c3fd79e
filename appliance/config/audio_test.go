package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// [audio] and [sim.echo]: the defaults, and a value out of range refused
// naming its key.
func TestAudioAndSimEcho(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Audio.AEC || c.Audio.NS || c.Audio.AGC {
		t.Errorf("[audio] defaults %+v, want aec on, ns and agc off", c.Audio)
	}
	e := c.Sim.Echo
	if e.Enabled || e.Delay.Duration != 80*time.Millisecond || e.AttenuationDB != 10 || e.Reverb.Duration != 150*time.Millisecond {
		t.Errorf("[sim.echo] defaults %+v", e)
	}
	for _, bad := range []struct{ text, key string }{
		{"[sim.echo]\ndelay = \"600ms\"\n", "sim.echo.delay"},
		{"[sim.echo]\nreverb = \"-1ms\"\n", "sim.echo.reverb"},
		{"[sim.echo]\nattenuation_db = -3.0\n", "sim.echo.attenuation_db"},
		{"[sim.echo]\nattenuation_db = 61.0\n", "sim.echo.attenuation_db"},
		{"[audio]\naec = \"yes\"\n", "aec"},
	} {
		path := filepath.Join(t.TempDir(), "roomd.toml")
		if err := os.WriteFile(path, []byte(bad.text), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), bad.key) {
			t.Errorf("%q: %v, want an error naming %s", bad.text, err, bad.key)
		}
	}
	if ScopeOf("audio.aec") != Live || ScopeOf("sim.echo.delay") != Live {
		t.Error("[audio] and [sim.echo] must be live")
	}
}
