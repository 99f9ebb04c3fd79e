package mosquitto

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// RetentionKeys are the mosquitto.conf options that decide what the broker
// keeps and for how long, with Mosquitto 2.0's defaults (what holds when a
// file leaves one out). "" for persistent_client_expiration is Mosquitto's
// default: a disconnected client's session is never dropped.
var RetentionKeys = map[string]string{
	"persistence":                  "false",
	"persistence_location":         "",
	"autosave_interval":            "1800",
	"retain_available":             "true",
	"max_queued_messages":          "1000",
	"max_queued_bytes":             "0",
	"persistent_client_expiration": "",
	"message_size_limit":           "0",
}

// ReadRetention reads the retention options (RetentionKeys) of a
// mosquitto.conf, defaults filled in, for the privacy report (fleetctl
// privacy-report --broker-config): what the broker is really told to
// keep. A value Mosquitto would refuse (a boolean that is not true or
// false, a count that is not a number, an expiry that is not 30d, 12h...)
// is an error naming the file and the line.
func ReadRetention(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("broker config %s: %w (give the mosquitto.conf the broker runs with)", path, err)
	}
	defer f.Close()
	out := make(map[string]string, len(RetentionKeys))
	for k, v := range RetentionKeys {
		out[k] = v
	}
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		key, val := fields[0], strings.Join(fields[1:], " ")
		if _, ok := RetentionKeys[key]; !ok {
			continue
		}
		if err := checkRetention(key, val); err != nil {
			return nil, fmt.Errorf("broker config %s line %d: %s %q: %w: fix the file (Mosquitto refuses it too)", path, n, key, val, err)
		}
		out[key] = val
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("broker config %s: %w", path, err)
	}
	return out, nil
}

func checkRetention(key, val string) error {
	switch key {
	case "persistence", "retain_available":
		if val != "true" && val != "false" {
			return fmt.Errorf("true or false")
		}
	case "persistence_location":
		if val == "" {
			return fmt.Errorf("a folder")
		}
	case "autosave_interval", "max_queued_messages", "max_queued_bytes", "message_size_limit":
		if n, err := strconv.ParseInt(val, 10, 64); err != nil || n < 0 {
			return fmt.Errorf("a whole number, 0 or more")
		}
	case "persistent_client_expiration":
		if _, err := ParseExpiry(val); err != nil {
			return err
		}
	}
	return nil
}

// ParseExpiry reads persistent_client_expiration: a number and one of h,
// d, w, m (30 days), y (365 days), as Mosquitto reads it.
func ParseExpiry(v string) (time.Duration, error) {
	if len(v) < 2 {
		return 0, fmt.Errorf("a number and h, d, w, m or y (30d)")
	}
	n, err := strconv.Atoi(v[:len(v)-1])
	unit := map[byte]time.Duration{'h': time.Hour, 'd': 24 * time.Hour, 'w': 7 * 24 * time.Hour, 'm': 30 * 24 * time.Hour, 'y': 365 * 24 * time.Hour}[v[len(v)-1]]
	if err != nil || n <= 0 || unit == 0 {
		return 0, fmt.Errorf("a number and h, d, w, m or y (30d)")
	}
	return time.Duration(n) * unit, nil
}
