package main

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

//go:embed default.toml
var defaultConfig string

// Config is roomd's configuration file. README.md documents every key.
type Config struct {
	Unit struct {
		Board string `toml:"board"`
	} `toml:"unit"`
	Pins    map[string]string `toml:"pins"`
	Buttons struct {
		Debounce  Duration `toml:"debounce"`
		LongPress Duration `toml:"long_press"`
	} `toml:"buttons"`
	Shutter struct {
		Timeout        Duration `toml:"timeout"`
		RequireSensors bool     `toml:"require_sensors"`
	} `toml:"shutter"`
	Call struct {
		JoinTimeout  Duration `toml:"join_timeout"`
		LeaveTimeout Duration `toml:"leave_timeout"`
		MaxLength    Duration `toml:"max_length"`
	} `toml:"call"`
	Conference struct {
		Connector        string   `toml:"connector"`
		URL              string   `toml:"url"`
		Room             string   `toml:"room"`
		Identity         string   `toml:"identity"`
		APIKey           string   `toml:"api_key"`
		APISecret        string   `toml:"api_secret"`
		Token            string   `toml:"token"`
		AllowedHosts     []string `toml:"allowed_hosts"`
		VideoCodec       string   `toml:"video_codec"`
		Camera           string   `toml:"camera"`
		Microphone       string   `toml:"microphone"`
		Width            int      `toml:"width"`
		Height           int      `toml:"height"`
		FPS              int      `toml:"fps"`
		VideoBitrateKbps int      `toml:"video_bitrate_kbps"`
		AudioBitrateKbps int      `toml:"audio_bitrate_kbps"`
	} `toml:"conference"`
	API struct {
		Socket string `toml:"socket"`
		HTTP   string `toml:"http"`
	} `toml:"api"`
	Log struct {
		Level  string `toml:"level"`
		Format string `toml:"format"`
	} `toml:"log"`
	Sim struct {
		Travel    Duration `toml:"travel"`
		JoinDelay Duration `toml:"join_delay"`
		Stamp     bool     `toml:"stamp"`
	} `toml:"sim"`
}

// Duration is a time.Duration written as "30ms", "2s".
type Duration struct{ time.Duration }

// UnmarshalText parses Go duration syntax.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration: write it like \"30ms\" or \"2s\"", string(b))
	}
	d.Duration = v
	return nil
}

// MarshalText writes Go duration syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// loadConfig reads the embedded defaults, then the file at path (if any) over
// them. Every error is one line that names the key and the fix.
func loadConfig(path string) (*Config, error) {
	var c Config
	if _, err := decodeStrict(defaultConfig, &c); err != nil {
		return nil, fmt.Errorf("built-in defaults: %w", err)
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if _, err := decodeStrict(string(b), &c); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := c.validate(); err != nil {
		if path == "" {
			path = "built-in defaults"
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

func decodeStrict(text string, c *Config) (toml.MetaData, error) {
	md, err := toml.Decode(text, c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return md, fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		return md, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, 0, len(und))
		for _, k := range und {
			keys = append(keys, k.String())
		}
		sort.Strings(keys)
		return md, fmt.Errorf("unknown key %s: remove it, or check its spelling against README.md \"Configuration\"", strings.Join(keys, ", "))
	}
	return md, nil
}

func (c *Config) validate() error {
	pos := func(name string, d Duration, min, max time.Duration) error {
		if d.Duration < min || d.Duration > max {
			return fmt.Errorf("%s = %q is out of range: use a value from %s to %s", name, d.String(), min, max)
		}
		return nil
	}
	return errors.Join(
		pos("buttons.debounce", c.Buttons.Debounce, time.Millisecond, 500*time.Millisecond),
		pos("buttons.long_press", c.Buttons.LongPress, 200*time.Millisecond, time.Minute),
		pos("shutter.timeout", c.Shutter.Timeout, 50*time.Millisecond, 30*time.Second),
		pos("call.join_timeout", c.Call.JoinTimeout, time.Second, 5*time.Minute),
		pos("call.leave_timeout", c.Call.LeaveTimeout, 100*time.Millisecond, time.Minute),
		pos("call.max_length", c.Call.MaxLength, 0, 24*time.Hour),
		pos("sim.travel", c.Sim.Travel, 0, 10*time.Second),
		pos("sim.join_delay", c.Sim.JoinDelay, 0, time.Minute),
		oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error"),
		oneOf("conference.connector", c.Conference.Connector, "", "livekit-whip"),
		oneOf("conference.video_codec", c.Conference.VideoCodec, "auto", "H264", "VP8"),
		intRange("conference.width", c.Conference.Width, 160, 3840),
		intRange("conference.height", c.Conference.Height, 120, 2160),
		intRange("conference.fps", c.Conference.FPS, 1, 60),
		intRange("conference.video_bitrate_kbps", c.Conference.VideoBitrateKbps, 100, 20000),
		intRange("conference.audio_bitrate_kbps", c.Conference.AudioBitrateKbps, 6, 510),
		oneOf("log.format", c.Log.Format, "text", "json"),
	)
}

func intRange(key string, v, min, max int) error {
	if v < min || v > max {
		return fmt.Errorf("%s = %d is out of range: use a value from %d to %d", key, v, min, max)
	}
	return nil
}

func oneOf(key, v string, valid ...string) error {
	for _, ok := range valid {
		if v == ok {
			return nil
		}
	}
	return fmt.Errorf("%s = %q: use one of %s", key, v, strings.Join(valid, ", "))
}
