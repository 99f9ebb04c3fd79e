package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// CommandUpdate asks the unit to install a signed system update (RAUC
// bundle, docs/UPDATES.md) while idle: arguments url (https), version,
// sha256 (64 lowercase hex digits), downgrade (bool, default false) and
// reboot ("now" or "window", default "window").
const CommandUpdate = "update"

// Update reboot modes.
const (
	RebootNow    = "now"    // reboot as soon as it is installed and the unit is idle
	RebootWindow = "window" // reboot in the unit's update.reboot_window (at once if it has none)
)

// MaxUpdateURL bounds the update command's url.
const MaxUpdateURL = 2048

// UpdateArgs are the update command's arguments after validation.
type UpdateArgs struct {
	URL       string `json:"url"`
	Version   string `json:"version"`
	SHA256    string `json:"sha256"`
	Downgrade bool   `json:"downgrade,omitempty"`
	Reboot    string `json:"reboot"`
}

var (
	versionRE = regexp.MustCompile(`^[0-9]{1,12}(\.[0-9]{1,12}){0,7}$`)
	sha256RE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidVersion says whether v is a dotted version number as image/build
// writes them (YYYY.MMDD.HHMMSS): digits and dots, at most 8 parts.
func ValidVersion(v string) bool { return versionRE.MatchString(v) }

// validateUpdate checks the update command's arguments. Its errors name the
// argument and never quote the url, which may carry a download token.
func validateUpdate(args map[string]json.RawMessage) (UpdateArgs, error) {
	out := UpdateArgs{Reboot: RebootWindow}
	str := func(k string, required bool) (string, error) {
		raw, ok := args[k]
		if !ok {
			if required {
				return "", fmt.Errorf("command update needs its %q argument: send it with fleetctl update", k)
			}
			return "", nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("update's %s must be a string", k)
		}
		return s, nil
	}
	var err error
	if out.URL, err = str("url", true); err != nil {
		return out, err
	}
	if err := checkUpdateURL(out.URL); err != nil {
		return out, err
	}
	if out.Version, err = str("version", true); err != nil {
		return out, err
	}
	if !ValidVersion(out.Version) {
		return out, errors.New("update's version must be a dotted version number such as 2026.1203.1 (digits and dots, as the bundle's manifest has it)")
	}
	if out.SHA256, err = str("sha256", true); err != nil {
		return out, err
	}
	if !sha256RE.MatchString(out.SHA256) {
		return out, errors.New("update's sha256 must be the bundle's SHA-256, 64 lowercase hex digits (sha256sum BUNDLE)")
	}
	if raw, ok := args["downgrade"]; ok {
		if err := json.Unmarshal(raw, &out.Downgrade); err != nil {
			return out, errors.New("update's downgrade must be true or false")
		}
	}
	rb, err := str("reboot", false)
	if err != nil {
		return out, err
	}
	switch rb {
	case "":
	case RebootNow, RebootWindow:
		out.Reboot = rb
	default:
		return out, errors.New(`update's reboot must be "now" or "window"`)
	}
	return out, nil
}

// checkUpdateURL refuses anything but a plain https URL with a host: no
// credentials in it (invariant 7), and no control characters or spaces,
// which would break the request file's one-key-a-line format.
func checkUpdateURL(s string) error {
	if len(s) > MaxUpdateURL {
		return fmt.Errorf("update's url is %d characters, at most %d", len(s), MaxUpdateURL)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return errors.New("update's url must not contain spaces or control characters: percent-encode them")
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("update's url is not a valid URL")
	}
	if u.Scheme != "https" {
		return errors.New("update's url must be https:// (the unit downloads bundles over https only)")
	}
	if u.Host == "" {
		return errors.New("update's url names no host")
	}
	if u.User != nil {
		return errors.New("update's url must not carry a user name or password: use a URL the unit can fetch without them")
	}
	// A query is where presigned URLs carry their token (S3's
	// X-Amz-Signature): the URL is kept in the unit's request and state
	// files and shown in its status, so a token there would sit in clear.
	// A bundle needs no secret URL: its hash and signature make it safe.
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#") {
		return errors.New("update's url must not have a query or fragment (a presigned token would be kept in clear on the unit): serve the bundle at a plain https path")
	}
	return nil
}

// UpdateArgsJSON is the update command's argument map for SignCommand.
func UpdateArgsJSON(a UpdateArgs) map[string]json.RawMessage {
	m := map[string]json.RawMessage{}
	put := func(k string, v any) {
		b, _ := json.Marshal(v) // strings and a bool always encode
		m[k] = b
	}
	put("url", a.URL)
	put("version", a.Version)
	put("sha256", a.SHA256)
	if a.Downgrade {
		put("downgrade", true)
	}
	if a.Reboot != "" {
		put("reboot", a.Reboot)
	}
	return m
}
