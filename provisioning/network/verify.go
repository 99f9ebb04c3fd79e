package network

import (
	"bytes"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// allowed is every key Render writes, by section: anything else in a
// spooled keyfile (a route, a proxy, a VPN secondary, another 802.1X file
// path, dispatcher or permission settings) is refused by name.
var allowed = map[string]map[string]bool{
	"connection":    set("id", "uuid", "type", "interface-name", "autoconnect-priority"),
	"ethernet":      set(),
	"wifi":          set("hidden", "mode", "ssid"),
	"wifi-security": set("key-mgmt", "pmf", "psk"),
	"802-1x": set("anonymous-identity", "ca-cert", "domain-suffix-match", "eap", "identity", "password",
		"phase2-auth", "client-cert", "private-key", "private-key-password-flags"),
	"ipv4": set("address1", "dns", "method"),
	"ipv6": set("method"),
}

func set(keys ...string) map[string]bool {
	m := map[string]bool{}
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// VerifyKeyfile checks that b, spooled as name, is exactly what Render
// writes for a valid [network] section: the keyfile is parsed back into
// the typed config (only the keys Render writes are accepted), the config
// is validated as a fleet config would be, rendered again, and the result
// must be byte for byte b. The root helper runs it on every file before
// installing any, so roomd's user can install only what the fleet could
// have asked for. Every file path a keyfile names (EAP-TLS certificate and
// key, the "enrolment" CA) must pass fileOK. Errors name the file, the line
// and the key, never a value (keyfiles hold passphrases).
func VerifyKeyfile(name string, b []byte, fileOK func(path string) error) error {
	if err := verifyKeyfile(name, b, fileOK); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

type kvLine struct {
	line    int
	section string
	key     string
	value   string
}

func verifyKeyfile(name string, b []byte, fileOK func(path string) error) error {
	kf, err := readKeyfile(b)
	if err != nil {
		return err
	}
	get := func(section, key string) (string, bool) {
		for _, l := range kf {
			if l.section == section && l.key == key {
				return l.value, true
			}
		}
		return "", false
	}
	str := func(section, key string) (string, error) {
		v, _ := get(section, key)
		s, err := unescape(v)
		if err != nil {
			return "", fmt.Errorf("[%s] %s: %w", section, key, err)
		}
		return s, nil
	}
	typ, _ := get("connection", "type")
	var rendered []byte
	switch {
	case name == EthernetID+Suffix && typ == "ethernet":
		e := Ethernet{Method: DHCP}
		if e.Interface, err = str("connection", "interface-name"); err != nil {
			return err
		}
		if m, _ := get("ipv4", "method"); m == "manual" {
			e.Method = Static
			addr, _ := get("ipv4", "address1")
			e.Address, e.Gateway, _ = strings.Cut(addr, ",")
		} else if a, ok := get("ipv4", "address1"); ok || a != "" {
			return errors.New("[ipv4] address1: only written with method=manual: refused")
		}
		if d, ok := get("ipv4", "dns"); ok {
			e.DNS = strings.Split(strings.TrimSuffix(d, ";"), ";")
		}
		if err := (Config{Ethernet: &e}).Validate(); err != nil {
			return fmt.Errorf("not a profile roomd renders: %w", err)
		}
		rendered = renderEthernet(&e)
	case strings.HasPrefix(name, Prefix+"wifi-") && typ == "wifi":
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, Prefix+"wifi-"), Suffix))
		if err != nil || n < 0 || n >= MaxWiFi || name != wifiID(n)+Suffix {
			return fmt.Errorf("not a Wi-Fi profile name roomd writes (konsult-wifi-0 to konsult-wifi-%d)", MaxWiFi-1)
		}
		w, id, err := wifiFromKeyfile(get, str)
		if err != nil {
			return err
		}
		for _, p := range []struct{ key, path string }{{"ca-cert", id.CACert}, {"client-cert", id.ClientCert}, {"private-key", id.PrivateKey}} {
			if p.path == "" {
				continue
			}
			if strings.HasPrefix(p.path, "pkcs11:") {
				return fmt.Errorf("[802-1x] %s: a PKCS#11 key is not supported by the root helper: refused", p.key)
			}
			if err := fileOK(p.path); err != nil {
				return fmt.Errorf("[802-1x] %s: the file it names %v: refused", p.key, err)
			}
		}
		if err := (Config{WiFi: []WiFi{w}}).Validate(); err != nil {
			return fmt.Errorf("not a profile roomd renders: %w", err)
		}
		if rendered, err = renderWiFi(wifiID(n), &w, id); err != nil {
			return fmt.Errorf("not a profile roomd renders: %w", err)
		}
	default:
		return errors.New("[connection] type: does not match the file name (konsult-eth0 is ethernet, konsult-wifi-N is wifi): refused")
	}
	if !bytes.Equal(rendered, b) {
		return diffLine(b, rendered, kf)
	}
	return nil
}

// wifiFromKeyfile is the inverse of renderWiFi.
func wifiFromKeyfile(get func(string, string) (string, bool), str func(string, string) (string, error)) (WiFi, Identity, error) {
	var w WiFi
	var id Identity
	var err error
	if p, ok := get("connection", "autoconnect-priority"); ok {
		if w.Priority, err = strconv.Atoi(p); err != nil {
			return w, id, errors.New("[connection] autoconnect-priority: not a number: refused")
		}
	}
	w.Hidden = must(get("wifi", "hidden")) == "true"
	ssid, _ := get("wifi", "ssid")
	if w.SSID, err = parseSSID(ssid); err != nil {
		return w, id, fmt.Errorf("[wifi] ssid: %w", err)
	}
	switch km, _ := get("wifi-security", "key-mgmt"); km {
	case "wpa-psk", "sae":
		w.Security = WPA2Personal
		if km == "sae" {
			w.Security = WPA3Personal
		}
		psk, err := str("wifi-security", "psk")
		if err != nil {
			return w, id, err
		}
		w.PSK = Secret(psk)
	case "wpa-eap":
		w.Security = Enterprise
		w.EAP = strings.TrimSuffix(must(get("802-1x", "eap")), ";")
		for _, f := range []struct {
			key string
			dst *string
		}{{"anonymous-identity", &w.AnonymousIdentity}, {"domain-suffix-match", &w.DomainSuffixMatch}, {"identity", &w.Identity},
			{"client-cert", &id.ClientCert}, {"private-key", &id.PrivateKey}} {
			if *f.dst, err = str("802-1x", f.key); err != nil {
				return w, id, err
			}
		}
		pw, err := str("802-1x", "password")
		if err != nil {
			return w, id, err
		}
		w.Password = Secret(pw)
		ca, _ := get("802-1x", "ca-cert")
		if blob, ok := strings.CutPrefix(ca, "data:;base64,"); ok {
			der, err := base64.StdEncoding.DecodeString(blob)
			if err != nil {
				return w, id, errors.New("[802-1x] ca-cert: not base64: refused")
			}
			w.CACert = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		} else if ca != "" {
			w.CACert = CAEnrolment
			if id.CACert, err = str("802-1x", "ca-cert"); err != nil {
				return w, id, err
			}
		}
	default:
		return w, id, errors.New("[wifi-security] key-mgmt: not one roomd writes (wpa-psk, sae, wpa-eap): refused")
	}
	return w, id, nil
}

func must(v string, _ bool) string { return v }

var (
	byteList  = regexp.MustCompile(`^([0-9]{1,3};)+$`)
	plainName = regexp.MustCompile(`^[A-Za-z0-9_.-]*$`)
)

// parseSSID is the inverse of ssidValue.
func parseSSID(v string) (string, error) {
	if byteList.MatchString(v) {
		var b []byte
		for _, f := range strings.Split(strings.TrimSuffix(v, ";"), ";") {
			n, err := strconv.Atoi(f)
			if err != nil || n > 255 {
				return "", errors.New("not a list of byte values")
			}
			b = append(b, byte(n))
		}
		return string(b), nil
	}
	s, err := unescape(v)
	if err != nil {
		return "", err
	}
	return strings.ReplaceAll(s, `\;`, ";"), nil
}

// unescape is the inverse of escape (GKeyFile's string escapes).
func unescape(v string) (string, error) {
	if !strings.Contains(v, `\`) {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '\\' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 == len(v) {
			return "", errors.New("ends in a lone backslash: refused")
		}
		i++
		switch v[i] {
		case 's':
			b.WriteByte(' ')
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '\\':
			b.WriteByte('\\')
		default:
			return "", errors.New("has an escape roomd does not write: refused")
		}
	}
	return b.String(), nil
}

// readKeyfile reads the keyfile subset Render writes: "[section]" headers,
// "key=value" lines and the blank line between sections, each section and
// key once, only the sections and keys in allowed. Comments, includes,
// localised keys ("key[de]") or anything else are refused by line.
func readKeyfile(b []byte) ([]kvLine, error) {
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return nil, errors.New("does not end with a newline: not a keyfile roomd wrote")
	}
	var out []kvLine
	section := ""
	seenSection := map[string]bool{}
	seenKey := map[string]bool{}
	for i, l := range strings.Split(string(b[:len(b)-1]), "\n") {
		n := i + 1
		switch {
		case l == "":
			continue
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
			if _, ok := allowed[section]; !ok {
				return nil, fmt.Errorf("line %d: section [%s] is not one roomd writes: refused", n, printable(section))
			}
			if seenSection[section] {
				return nil, fmt.Errorf("line %d: section [%s] appears twice: refused", n, section)
			}
			seenSection[section] = true
		default:
			key, value, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("line %d: not a key=value line inside a section: refused", n)
			}
			if !allowed[section][key] {
				return nil, fmt.Errorf("line %d: [%s] %s is not a key roomd writes: refused", n, section, printable(key))
			}
			if seenKey[section+"."+key] {
				return nil, fmt.Errorf("line %d: [%s] %s appears twice: refused", n, section, key)
			}
			seenKey[section+"."+key] = true
			out = append(out, kvLine{line: n, section: section, key: key, value: value})
		}
	}
	return out, nil
}

// printable keeps a name from the file safe to show: a key or section name
// is not a secret, but a crafted one could carry one, or terminal escapes.
func printable(s string) string {
	if len(s) > 40 || !plainName.MatchString(s) {
		return "(an unexpected name)"
	}
	return s
}

// diffLine names the first line where b differs from what Render writes
// for the same settings, by section and key only.
func diffLine(b, want []byte, kf []kvLine) error {
	got, exp := strings.Split(string(b), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(got) || i < len(exp); i++ {
		if i < len(got) && i < len(exp) && got[i] == exp[i] {
			continue
		}
		for _, l := range kf {
			if l.line == i+1 {
				return fmt.Errorf("line %d: [%s] %s is not what roomd renders for these settings (order, spelling or a value it would not write): refused", i+1, l.section, l.key)
			}
		}
		return fmt.Errorf("line %d differs from what roomd renders for these settings: refused", i+1)
	}
	return errors.New("differs from what roomd renders for these settings: refused")
}
