package network

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"unicode/utf8"
)

// Security modes of a Wi-Fi network.
const (
	WPA2Personal = "wpa2-personal" // WPA-PSK
	WPA3Personal = "wpa3-personal" // SAE, management frame protection required
	Enterprise   = "enterprise"    // 802.1X (WPA2/WPA3-Enterprise)
)

// EAP methods for Enterprise networks.
const (
	EAPTLS  = "tls"  // EAP-TLS with the unit's own certificate (Identity)
	EAPPEAP = "peap" // PEAP with MSCHAPv2 inside
)

// Ethernet methods.
const (
	DHCP   = "dhcp"
	Static = "static"
)

// CAEnrolment as ca_cert means: validate the RADIUS server against the fleet
// CA the unit received at enrolment (Identity.CACert).
const CAEnrolment = "enrolment"

// MaxWiFi is the most Wi-Fi networks a config may list.
const MaxWiFi = 16

// Config is the fleet config's [network] section. The zero value (no
// section) leaves the OS network config alone.
type Config struct {
	Ethernet *Ethernet `toml:"ethernet" json:"ethernet,omitempty"`
	WiFi     []WiFi    `toml:"wifi" json:"wifi,omitempty"`
}

// Ethernet is the one wired profile, konsult-eth0.
type Ethernet struct {
	// Interface binds the profile to one device ("eth0"); empty matches any
	// wired device.
	Interface string `toml:"interface" json:"interface,omitempty"`
	// Method is "dhcp" (the default when empty) or "static".
	Method string `toml:"method" json:"method,omitempty"`
	// Address is the static IPv4 address with its prefix, "192.168.10.20/24".
	Address string `toml:"address" json:"address,omitempty"`
	// Gateway is the static default gateway (optional).
	Gateway string `toml:"gateway" json:"gateway,omitempty"`
	// DNS lists static IPv4 name servers (optional).
	DNS []string `toml:"dns" json:"dns,omitempty"`
}

// WiFi is one Wi-Fi network, konsult-wifi-<index>.
type WiFi struct {
	SSID     string `toml:"ssid" json:"ssid"`
	Hidden   bool   `toml:"hidden" json:"hidden,omitempty"`
	Security string `toml:"security" json:"security"`
	// Priority orders automatic connection: higher first (NetworkManager's
	// connection.autoconnect-priority, -999..999).
	Priority int `toml:"priority" json:"priority,omitempty"`

	// PSK is the WPA2/WPA3-Personal passphrase.
	PSK Secret `toml:"psk" json:"psk,omitempty"`

	// 802.1X (Security = "enterprise").
	EAP               string `toml:"eap" json:"eap,omitempty"`
	Identity          string `toml:"identity" json:"identity,omitempty"`
	AnonymousIdentity string `toml:"anonymous_identity" json:"anonymous_identity,omitempty"`
	Password          Secret `toml:"password" json:"password,omitempty"`
	// CACert is the PEM certificate of the CA that issued the RADIUS
	// server's certificate, or "enrolment" for the fleet CA.
	CACert            string `toml:"ca_cert" json:"ca_cert,omitempty"`
	DomainSuffixMatch string `toml:"domain_suffix_match" json:"domain_suffix_match,omitempty"`
}

// Managed reports whether the config asks roomd to manage the network at
// all. False (the default) means leave the OS network config alone.
func (c Config) Managed() bool { return c.Ethernet != nil || len(c.WiFi) > 0 }

// Secret is a string that never prints or marshals its value: fmt shows
// "(set)" or "", MarshalText gives "(set)" or "". Use string(s) to read it.
type Secret string

// Redaction is what a set Secret shows instead of its value.
const Redaction = "(set)"

func (s Secret) redacted() string {
	if s == "" {
		return ""
	}
	return Redaction
}

// String returns "(set)" or "".
func (s Secret) String() string { return s.redacted() }

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return fmt.Sprintf("%q", s.redacted()) }

// Format makes every fmt verb (%s, %v, %q, %x, ...) print the redaction.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, s.GoString())
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), s.redacted())
}

// MarshalText writes "(set)" or "": a marshalled config (reported state,
// JSON, TOML) never holds the secret.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.redacted()), nil }

// UnmarshalText takes the value as is, but refuses the redaction
// placeholder: a config that went through MarshalText has lost its secret.
func (s *Secret) UnmarshalText(b []byte) error {
	if string(b) == Redaction {
		return errors.New(`"(set)" is the redaction placeholder, not a secret: the real value was lost; send the secret itself`)
	}
	*s = Secret(b)
	return nil
}

// Redacted returns a copy safe for reported state and logs: secrets become
// "(set)" or "", a PEM ca_cert becomes "sha256:<hex>" of its DER.
func (c Config) Redacted() Config {
	out := Config{}
	if c.Ethernet != nil {
		e := *c.Ethernet
		e.DNS = append([]string(nil), e.DNS...)
		out.Ethernet = &e
	}
	for _, w := range c.WiFi {
		w.PSK = Secret(w.PSK.redacted())
		w.Password = Secret(w.Password.redacted())
		if w.CACert != "" && w.CACert != CAEnrolment {
			w.CACert = caFingerprint(w.CACert)
		}
		out.WiFi = append(out.WiFi, w)
	}
	return out
}

func caFingerprint(p string) string {
	blk, _ := pem.Decode([]byte(p))
	if blk == nil {
		return "(unparsable)"
	}
	sum := sha256.Sum256(blk.Bytes)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ConnectionIDs lists the connection ids Render makes for c in the order to
// activate them: konsult-eth0 first, then the Wi-Fi networks by priority
// (highest first, then their order in the config).
func (c Config) ConnectionIDs() []string {
	var ids []string
	if c.Ethernet != nil {
		ids = append(ids, EthernetID)
	}
	idx := make([]int, len(c.WiFi))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return c.WiFi[idx[a]].Priority > c.WiFi[idx[b]].Priority })
	for _, i := range idx {
		ids = append(ids, wifiID(i))
	}
	return ids
}

// fieldError is one validation failure: the key and the fix, one line.
type fieldError struct{ key, msg string }

func (e *fieldError) Error() string { return e.key + ": " + e.msg }

// Validate checks the section. Each failure is one line naming the key and
// the fix; several are joined with newlines. No message holds a secret.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, &fieldError{key, fmt.Sprintf(format, args...)})
	}
	if e := c.Ethernet; e != nil {
		validateEthernet(e, add)
	}
	if len(c.WiFi) > MaxWiFi {
		add("network.wifi", "at most %d networks; remove %d", MaxWiFi, len(c.WiFi)-MaxWiFi)
	}
	seen := map[string]int{}
	for i := range c.WiFi {
		w := &c.WiFi[i]
		key := fmt.Sprintf("network.wifi[%d]", i)
		if j, dup := seen[w.SSID]; dup && w.SSID != "" {
			add(key+".ssid", "%q is already network.wifi[%d]; list each network once", w.SSID, j)
		}
		seen[w.SSID] = i
		validateWiFi(key, w, add)
	}
	return errors.Join(errs...)
}

func validateEthernet(e *Ethernet, add func(key, format string, args ...any)) {
	const k = "network.ethernet"
	if e.Interface != "" && !validIfname(e.Interface) {
		add(k+".interface", "%q is not an interface name; use a name such as \"eth0\" (1–15 characters, no '/' or spaces), or leave it out to match any wired device", e.Interface)
	}
	switch e.Method {
	case "", DHCP:
		for _, f := range []struct {
			key string
			set bool
		}{{"address", e.Address != ""}, {"gateway", e.Gateway != ""}, {"dns", len(e.DNS) > 0}} {
			if f.set {
				add(k+"."+f.key, "only used with method = \"static\"; remove it or set method = \"static\"")
			}
		}
	case Static:
		p, err := netip.ParsePrefix(e.Address)
		switch {
		case e.Address == "":
			add(k+".address", "required with method = \"static\"; give the IPv4 address and prefix, e.g. \"192.168.10.20/24\"")
		case err != nil || !p.Addr().Is4():
			add(k+".address", "%q is not an IPv4 address with a prefix; write it like \"192.168.10.20/24\"", e.Address)
		case p.Bits() == 0 || p.Addr() == p.Masked().Addr():
			add(k+".address", "%q is a network, not a host address; give the unit's own address, e.g. \"192.168.10.20/24\"", e.Address)
		}
		if e.Gateway != "" {
			g, err := netip.ParseAddr(e.Gateway)
			switch {
			case err != nil || !g.Is4():
				add(k+".gateway", "%q is not an IPv4 address; write it like \"192.168.10.1\"", e.Gateway)
			case err == nil && p.IsValid() && p.Addr().Is4() && !p.Contains(g):
				add(k+".gateway", "%s is outside %s; give a gateway on the unit's own subnet", e.Gateway, p.Masked())
			}
		}
		for i, d := range e.DNS {
			if a, err := netip.ParseAddr(d); err != nil || !a.Is4() {
				add(fmt.Sprintf("%s.dns[%d]", k, i), "%q is not an IPv4 address; list name servers like [\"192.168.10.1\"]", d)
			}
		}
	default:
		add(k+".method", "%q is not a method; use \"dhcp\" or \"static\"", e.Method)
	}
}

func validateWiFi(key string, w *WiFi, add func(key, format string, args ...any)) {
	switch {
	case w.SSID == "":
		add(key+".ssid", "required; give the network's name")
	case len(w.SSID) > 32:
		add(key+".ssid", "%q is %d bytes; SSIDs are at most 32 bytes", w.SSID, len(w.SSID))
	}
	if w.Priority < -999 || w.Priority > 999 {
		add(key+".priority", "%d is out of range; use -999..999 (higher is tried first)", w.Priority)
	}
	personal := w.Security == WPA2Personal || w.Security == WPA3Personal
	switch w.Security {
	case WPA2Personal, WPA3Personal:
		name, alt := "WPA2", " (or 64 hex digits)"
		if w.Security == WPA3Personal {
			name, alt = "WPA3-Personal", ""
		}
		switch {
		case w.PSK == "":
			add(key+".psk", "required for security = %q; give the network's passphrase", w.Security)
		case w.Security == WPA2Personal && isHex64(string(w.PSK)):
			// a raw 256-bit PSK
		case !printableASCII(string(w.PSK)) || len(w.PSK) < 8 || len(w.PSK) > 63:
			add(key+".psk", "%s passphrases are 8–63 printable ASCII characters%s; check the passphrase", name, alt)
		}
	case Enterprise:
		validateEnterprise(key, w, add)
	case "":
		add(key+".security", "required; use \"wpa2-personal\", \"wpa3-personal\" or \"enterprise\" (open networks are not supported)")
	default:
		add(key+".security", "%q is not supported; use \"wpa2-personal\", \"wpa3-personal\" or \"enterprise\"", w.Security)
	}
	if !personal && w.PSK != "" && w.Security != "" {
		add(key+".psk", "only used with security = \"wpa2-personal\" or \"wpa3-personal\"; remove it")
	}
	if w.Security != Enterprise {
		for _, f := range []struct {
			key string
			set bool
		}{
			{"eap", w.EAP != ""}, {"identity", w.Identity != ""}, {"anonymous_identity", w.AnonymousIdentity != ""},
			{"password", w.Password != ""}, {"ca_cert", w.CACert != ""}, {"domain_suffix_match", w.DomainSuffixMatch != ""},
		} {
			if f.set && w.Security != "" {
				add(key+"."+f.key, "only used with security = \"enterprise\"; remove it")
			}
		}
	}
}

func validateEnterprise(key string, w *WiFi, add func(key, format string, args ...any)) {
	switch w.EAP {
	case EAPPEAP:
		if w.Identity == "" {
			add(key+".identity", "required for eap = \"peap\"; give the network account's user name")
		}
		if w.Password == "" {
			add(key+".password", "required for eap = \"peap\"; give the network account's password")
		} else if !noControl(string(w.Password)) {
			add(key+".password", "contains a control character (newline, tab, ...); send the password without it")
		}
	case EAPTLS:
		if w.Password != "" {
			add(key+".password", "not used with eap = \"tls\" (the unit authenticates with its certificate); remove it")
		}
	case "":
		add(key+".eap", "required for security = \"enterprise\"; use \"tls\" (the unit's certificate) or \"peap\" (PEAP-MSCHAPv2)")
	default:
		add(key+".eap", "%q is not supported; use \"tls\" or \"peap\"", w.EAP)
	}
	for _, f := range []struct{ key, val string }{{"identity", w.Identity}, {"anonymous_identity", w.AnonymousIdentity}} {
		if !noControl(f.val) || strings.HasPrefix(f.val, " ") {
			add(key+"."+f.key, "has a control character or leading space; remove it")
		}
	}
	const why = "802.1X without server validation lets any access point pose as the clinic's network and collect the unit's credentials"
	switch {
	case w.CACert == "":
		add(key+".ca_cert", "required: %s; give the PEM certificate of the CA that issued the RADIUS server's certificate (or \"enrolment\" for the fleet CA)", why)
	case w.CACert == CAEnrolment:
	default:
		if err := checkCAPEM(w.CACert); err != nil {
			add(key+".ca_cert", "%v; give exactly one PEM certificate of the CA that issued the RADIUS server's certificate", err)
		}
	}
	switch {
	case w.DomainSuffixMatch == "":
		add(key+".domain_suffix_match", "required: %s (a CA alone accepts any server it ever certified); give the RADIUS server certificate's DNS name, e.g. \"radius.clinic.example\"", why)
	case !validDomain(w.DomainSuffixMatch):
		add(key+".domain_suffix_match", "%q is not a DNS name; give the RADIUS server certificate's name, e.g. \"radius.clinic.example\"", w.DomainSuffixMatch)
	}
}

func checkCAPEM(s string) error {
	blk, rest := pem.Decode([]byte(s))
	if blk == nil {
		return errors.New("not a PEM certificate")
	}
	if blk.Type != "CERTIFICATE" {
		return fmt.Errorf("PEM block is %q, not CERTIFICATE", blk.Type)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return errors.New("the certificate does not parse")
	}
	if more, _ := pem.Decode(rest); more != nil {
		return errors.New("holds more than one PEM block")
	}
	if !cert.IsCA {
		return errors.New("is not a CA certificate (basicConstraints CA:FALSE)")
	}
	return nil
}

func validIfname(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == '/' || r == ':' || r >= 0x7f {
			return false
		}
	}
	return true
}

func validDomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func noControl(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
