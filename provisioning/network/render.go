package network

import (
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Names of what Render makes.
const (
	// Prefix starts every connection id and keyfile name this package owns.
	Prefix = "konsult-"
	// Suffix ends every keyfile name.
	Suffix = ".nmconnection"
	// EthernetID is the wired profile's connection id.
	EthernetID = Prefix + "eth0"
	// DefaultDir is where NetworkManager reads system keyfiles.
	DefaultDir = "/etc/NetworkManager/system-connections"
)

func wifiID(i int) string { return Prefix + "wifi-" + strconv.Itoa(i) }

// Identity is where the unit's own credentials from enrolment are, as file
// paths (provisioning/identity's ca.crt, device.crt, key.pem). EAP-TLS
// uses ClientCert and PrivateKey, and CACert when a network's ca_cert is
// "enrolment". NetworkManager reads the files itself (as root) when it
// connects, so the paths must be absolute and stay in place.
type Identity struct {
	CACert     string // the fleet CA (PEM)
	ClientCert string // the unit's certificate (PEM)
	// PrivateKey is the unit's key (PEM, unencrypted; NetworkManager is
	// told no password is needed). When the key moves into a TPM or secure
	// element this becomes a PKCS#11 URI ("pkcs11:..."), which
	// NetworkManager's 802-1x.private-key also accepts; Render passes such a
	// URI through unchanged.
	PrivateKey string
}

// Render turns c into NetworkManager keyfiles: file name → contents. It
// validates c first. An unmanaged (empty) config gives an empty map. The
// output depends only on c, id and, for EAP-TLS without an identity, the
// CN of the unit's certificate (read from id.ClientCert).
func Render(c Config, id Identity) (map[string][]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("network: invalid config: %w", err)
	}
	files := map[string][]byte{}
	if c.Ethernet != nil {
		files[EthernetID+Suffix] = renderEthernet(c.Ethernet)
	}
	for i := range c.WiFi {
		b, err := renderWiFi(wifiID(i), &c.WiFi[i], id)
		if err != nil {
			return nil, fmt.Errorf("network: network.wifi[%d]: %w", i, err)
		}
		files[wifiID(i)+Suffix] = b
	}
	return files, nil
}

// keyfile builds a keyfile in a fixed order.
type keyfile struct{ b strings.Builder }

func (k *keyfile) section(name string) {
	if k.b.Len() > 0 {
		k.b.WriteByte('\n')
	}
	k.b.WriteString("[" + name + "]\n")
}

// set writes key=value; value must already be in keyfile syntax.
func (k *keyfile) set(key, value string) { k.b.WriteString(key + "=" + value + "\n") }

// str writes a string value with GKeyFile's escaping.
func (k *keyfile) str(key, value string) { k.set(key, escape(value)) }

func (k *keyfile) connection(id, typ, ifname string, priority int) {
	k.section("connection")
	k.set("id", id)
	k.set("uuid", stableUUID(id))
	k.set("type", typ)
	if ifname != "" {
		k.str("interface-name", ifname)
	}
	if priority != 0 {
		k.set("autoconnect-priority", strconv.Itoa(priority))
	}
}

func (k *keyfile) ipv6Auto() {
	k.section("ipv6")
	k.set("method", "auto")
}

func renderEthernet(e *Ethernet) []byte {
	var k keyfile
	k.connection(EthernetID, "ethernet", e.Interface, 0)
	k.section("ethernet")
	k.section("ipv4")
	if e.Method == Static {
		addr := e.Address
		if e.Gateway != "" {
			addr += "," + e.Gateway
		}
		k.set("address1", addr)
		if len(e.DNS) > 0 {
			k.set("dns", strings.Join(e.DNS, ";")+";")
		}
		k.set("method", "manual")
	} else {
		k.set("method", "auto")
	}
	k.ipv6Auto()
	return []byte(k.b.String())
}

func renderWiFi(id string, w *WiFi, ident Identity) ([]byte, error) {
	var k keyfile
	k.connection(id, "wifi", "", w.Priority)
	k.section("wifi")
	if w.Hidden {
		k.set("hidden", "true")
	}
	k.set("mode", "infrastructure")
	k.set("ssid", ssidValue(w.SSID))
	k.section("wifi-security")
	switch w.Security {
	case WPA2Personal:
		k.set("key-mgmt", "wpa-psk")
		k.str("psk", string(w.PSK))
	case WPA3Personal:
		k.set("key-mgmt", "sae")
		k.set("pmf", "3") // required: WPA3 mandates protected management frames
		k.str("psk", string(w.PSK))
	case Enterprise:
		k.set("key-mgmt", "wpa-eap")
		if err := render8021X(&k, w, ident); err != nil {
			return nil, err
		}
	}
	k.section("ipv4")
	k.set("method", "auto")
	k.ipv6Auto()
	return []byte(k.b.String()), nil
}

func render8021X(k *keyfile, w *WiFi, ident Identity) error {
	var caValue string
	if w.CACert == CAEnrolment {
		if err := needFile("ca_cert = \"enrolment\" needs the fleet CA", ident.CACert); err != nil {
			return err
		}
		caValue = escape(ident.CACert)
	} else {
		blk, _ := pem.Decode([]byte(w.CACert)) // checked by Validate
		// NetworkManager's blob scheme takes the DER certificate.
		caValue = "data:;base64," + base64.StdEncoding.EncodeToString(blk.Bytes)
	}
	identity := w.Identity
	if w.EAP == EAPTLS {
		if err := needFile("eap = \"tls\" needs the unit's certificate", ident.ClientCert); err != nil {
			return err
		}
		if !strings.HasPrefix(ident.PrivateKey, "pkcs11:") {
			if err := needFile("eap = \"tls\" needs the unit's private key", ident.PrivateKey); err != nil {
				return err
			}
		}
		if identity == "" {
			cn, err := certCN(ident.ClientCert)
			if err != nil {
				return err
			}
			identity = cn
		}
	}
	k.section("802-1x")
	if w.AnonymousIdentity != "" {
		k.str("anonymous-identity", w.AnonymousIdentity)
	}
	k.set("ca-cert", caValue)
	k.str("domain-suffix-match", w.DomainSuffixMatch)
	k.set("eap", w.EAP+";")
	k.str("identity", identity)
	switch w.EAP {
	case EAPPEAP:
		k.str("password", string(w.Password))
		k.set("phase2-auth", "mschapv2")
	case EAPTLS:
		k.str("client-cert", ident.ClientCert)
		k.str("private-key", ident.PrivateKey)
		k.set("private-key-password-flags", "4") // not required: the key is not encrypted
	}
	return nil
}

func needFile(what, path string) error {
	switch {
	case path == "":
		return fmt.Errorf("%s, and this unit has none: enrol it first", what)
	case !filepath.IsAbs(path):
		return fmt.Errorf("%s at an absolute path, not %q", what, path)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func certCN(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read the unit's certificate for the EAP identity: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", fmt.Errorf("%s is not a PEM certificate; set identity explicitly or re-enrol the unit", path)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	cn := cert.Subject.CommonName
	if cn == "" || !noControl(cn) {
		return "", errors.New("the unit's certificate has no usable CN for the EAP identity; set identity explicitly")
	}
	return cn, nil
}

// escape is GKeyFile's string escaping (g_key_file_set_string): a
// backslash doubles, leading spaces become \s, control characters their
// escapes. Validate keeps control characters out of everything but SSIDs,
// which ssidValue handles.
func escape(s string) string {
	var b strings.Builder
	leading := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != ' ' {
			leading = false
		}
		switch {
		case c == ' ' && leading:
			b.WriteString(`\s`)
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\r':
			b.WriteString(`\r`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// ssidValue writes an SSID the way NetworkManager's keyfile writer does:
// printable ASCII as a string with ';' escaped, anything else as a list of
// byte values ("67;97;102;195;169;").
func ssidValue(ssid string) string {
	if printableASCII(ssid) {
		return escape(strings.ReplaceAll(ssid, ";", `\;`))
	}
	var b strings.Builder
	for i := 0; i < len(ssid); i++ {
		b.WriteString(strconv.Itoa(int(ssid[i])) + ";")
	}
	return b.String()
}

// stableUUID derives a name-based (version 5, SHA-1) UUID from the
// connection id, so the same profile keeps its UUID across renders.
func stableUUID(id string) string {
	// A fixed namespace for konsult's NetworkManager profiles.
	ns := [16]byte{0x6b, 0x6f, 0x6e, 0x73, 0x75, 0x6c, 0x74, 0x2d, 0x6e, 0x6d, 0x2d, 0x6b, 0x65, 0x79, 0x66, 0x31}
	h := sha1.New()
	h.Write(ns[:])
	h.Write([]byte(id))
	u := h.Sum(nil)[:16]
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
