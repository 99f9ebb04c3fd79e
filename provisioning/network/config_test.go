package network

import (
	"reflect"
	"strings"
	"testing"
)

func TestDecodeFullConfig(t *testing.T) {
	p := newPKI(t)
	c := mustDecode(t, fullConfigTOML(p))
	if !c.Managed() {
		t.Fatal("full config not Managed")
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if c.Ethernet == nil || c.Ethernet.Address != "192.168.10.20/24" || len(c.WiFi) != 4 {
		t.Fatalf("decoded %+v", c)
	}
	if string(c.WiFi[0].PSK) != testPSK || string(c.WiFi[2].Password) != testPassword {
		t.Fatal("secrets not decoded as given")
	}
	want := []string{"konsult-eth0", "konsult-wifi-1", "konsult-wifi-0", "konsult-wifi-2", "konsult-wifi-3"}
	if got := c.ConnectionIDs(); !reflect.DeepEqual(got, want) {
		t.Fatalf("ConnectionIDs = %v, want %v", got, want)
	}
}

func TestEmptySectionLeavesNetworkAlone(t *testing.T) {
	for _, text := range []string{"", "[network]\n"} {
		c := mustDecode(t, text)
		if c.Managed() {
			t.Fatalf("%q: Managed", text)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		files, err := Render(c, Identity{})
		if err != nil || len(files) != 0 {
			t.Fatalf("%q: Render = %v, %v; want no files", text, files, err)
		}
	}
}

func TestStrictDecodeRejectsUnknownKeys(t *testing.T) {
	for _, text := range []string{
		"[network]\nwlan = 1\n",
		"[[network.wifi]]\nssid = \"x\"\npassphrase = \"12345678\"\n",
		"[network.ethernet]\nip = \"10.0.0.2/24\"\n",
	} {
		if _, err := decodeStrict(text); err == nil {
			t.Errorf("%q decoded without error", text)
		}
	}
}

func TestValidate(t *testing.T) {
	p := newPKI(t)
	ca := tomlString(p.caPEM)
	wpa2 := func(extra string) string {
		return "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa2-personal\"\npsk = \"12345678\"\n" + extra
	}
	peap := func(lines ...string) string {
		base := map[string]string{
			"ssid": `"Staff"`, "security": `"enterprise"`, "eap": `"peap"`, "identity": `"room"`,
			"password": `"pw"`, "ca_cert": ca, "domain_suffix_match": `"radius.example.org"`,
		}
		for _, l := range lines {
			k, v, _ := strings.Cut(l, "=")
			if v == "" {
				delete(base, k)
			} else {
				base[k] = v
			}
		}
		var b strings.Builder
		b.WriteString("[[network.wifi]]\n")
		for _, k := range []string{"ssid", "security", "psk", "eap", "identity", "anonymous_identity", "password", "ca_cert", "domain_suffix_match"} {
			if v, ok := base[k]; ok {
				b.WriteString(k + " = " + v + "\n")
			}
		}
		return b.String()
	}
	tests := []struct {
		name, text string
		key, msg   string // wanted: error starts with key+": " and contains msg; "" = valid
	}{
		{"eth dhcp", "[network.ethernet]\n", "", ""},
		{"eth dhcp explicit", "[network.ethernet]\nmethod = \"dhcp\"\ninterface = \"end0\"\n", "", ""},
		{"eth static", "[network.ethernet]\nmethod = \"static\"\naddress = \"10.1.2.3/16\"\ngateway = \"10.1.0.1\"\ndns = [\"10.1.0.1\"]\n", "", ""},
		{"eth static no gw", "[network.ethernet]\nmethod = \"static\"\naddress = \"10.1.2.3/16\"\n", "", ""},
		{"eth bad method", "[network.ethernet]\nmethod = \"bootp\"\n", "network.ethernet.method", `use "dhcp" or "static"`},
		{"eth static no address", "[network.ethernet]\nmethod = \"static\"\n", "network.ethernet.address", "required"},
		{"eth bad address", "[network.ethernet]\nmethod = \"static\"\naddress = \"10.1.2.300/24\"\n", "network.ethernet.address", "192.168.10.20/24"},
		{"eth no prefix", "[network.ethernet]\nmethod = \"static\"\naddress = \"10.1.2.3\"\n", "network.ethernet.address", "with a prefix"},
		{"eth ipv6", "[network.ethernet]\nmethod = \"static\"\naddress = \"2001:db8::2/64\"\n", "network.ethernet.address", "IPv4"},
		{"eth network address", "[network.ethernet]\nmethod = \"static\"\naddress = \"10.1.0.0/16\"\n", "network.ethernet.address", "not a host address"},
		{"eth gw off subnet", "[network.ethernet]\nmethod = \"static\"\naddress = \"10.1.2.3/24\"\ngateway = \"10.9.9.1\"\n", "network.ethernet.gateway", "outside 10.1.2.0/24"},
		{"eth bad dns", "[network.ethernet]\nmethod = \"static\"\naddress = \"10.1.2.3/24\"\ndns = [\"10.1.2.1\", \"dns.example\"]\n", "network.ethernet.dns[1]", "not an IPv4 address"},
		{"eth address with dhcp", "[network.ethernet]\naddress = \"10.1.2.3/24\"\n", "network.ethernet.address", `method = "static"`},
		{"eth bad ifname", "[network.ethernet]\ninterface = \"eth0/../x\"\n", "network.ethernet.interface", "interface name"},

		{"wpa2", wpa2("hidden = true\npriority = 5\n"), "", ""},
		{"wpa2 hex psk", "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa2-personal\"\npsk = \"" + strings.Repeat("ab", 32) + "\"\n", "", ""},
		{"wpa3", "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa3-personal\"\npsk = \"12345678\"\n", "", ""},
		{"psk short", "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa2-personal\"\npsk = \"1234567\"\n", "network.wifi[0].psk", "WPA2 passphrases are 8–63"},
		{"psk long", "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa2-personal\"\npsk = \"" + strings.Repeat("x", 64) + "\"\n", "network.wifi[0].psk", "WPA2 passphrases are 8–63"},
		{"psk non-ascii", "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa2-personal\"\npsk = \"päss wörd\"\n", "network.wifi[0].psk", "printable ASCII"},
		{"wpa3 psk short", "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa3-personal\"\npsk = \"short\"\n", "network.wifi[0].psk", "WPA3-Personal passphrases"},
		{"psk missing", "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa2-personal\"\n", "network.wifi[0].psk", "required"},
		{"ssid missing", "[[network.wifi]]\nsecurity = \"wpa2-personal\"\npsk = \"12345678\"\n", "network.wifi[0].ssid", "required"},
		{"ssid too long", "[[network.wifi]]\nssid = \"" + strings.Repeat("s", 33) + "\"\nsecurity = \"wpa2-personal\"\npsk = \"12345678\"\n", "network.wifi[0].ssid", "at most 32 bytes"},
		{"security missing", "[[network.wifi]]\nssid = \"C\"\n", "network.wifi[0].security", "open networks are not supported"},
		{"security wep", "[[network.wifi]]\nssid = \"C\"\nsecurity = \"wep\"\n", "network.wifi[0].security", "not supported"},
		{"priority range", wpa2("priority = 1000\n"), "network.wifi[0].priority", "-999..999"},
		{"duplicate ssid", wpa2("") + wpa2(""), "network.wifi[1].ssid", "already network.wifi[0]"},
		{"eap field on psk net", wpa2("identity = \"x\"\n"), "network.wifi[0].identity", `only used with security = "enterprise"`},
		{"too many", strings.Repeat("[[network.wifi]]\nssid = \"C\"\nsecurity = \"wpa2-personal\"\npsk = \"12345678\"\n", 17), "network.wifi", "at most 16"},

		{"peap", peap(), "", ""},
		{"peap anon", peap(`anonymous_identity="anon@example.org"`), "", ""},
		{"peap enrolment ca", peap(`ca_cert="enrolment"`), "", ""},
		{"peap no ca", peap("ca_cert="), "network.wifi[0].ca_cert", "without server validation lets any access point pose"},
		{"peap no domain", peap("domain_suffix_match="), "network.wifi[0].domain_suffix_match", "a CA alone accepts any server"},
		{"peap bad domain", peap(`domain_suffix_match="radius example"`), "network.wifi[0].domain_suffix_match", "not a DNS name"},
		{"peap junk ca", peap(`ca_cert="not a cert"`), "network.wifi[0].ca_cert", "not a PEM certificate"},
		{"peap two cas", peap(`ca_cert=` + tomlString(p.caPEM+p.caPEM)), "network.wifi[0].ca_cert", "more than one PEM block"},
		{"peap no identity", peap("identity="), "network.wifi[0].identity", "required"},
		{"peap no password", peap("password="), "network.wifi[0].password", "required"},
		{"peap psk set", peap(`psk="12345678"`), "network.wifi[0].psk", "only used with"},
		{"eap missing", peap("eap="), "network.wifi[0].eap", `use "tls"`},
		{"eap ttls", peap(`eap="ttls"`), "network.wifi[0].eap", "not supported"},
		{"tls", peap(`eap="tls"`, "identity=", "password="), "", ""},
		{"tls with password", peap(`eap="tls"`), "network.wifi[0].password", "not used with eap = \"tls\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := decodeStrict(tt.text)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			err = c.Validate()
			if tt.key == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate passed; want %s: ...%s...", tt.key, tt.msg)
			}
			lines := strings.Split(err.Error(), "\n")
			found := false
			for _, l := range lines {
				if !strings.HasPrefix(l, "network.") || !strings.Contains(l, ": ") {
					t.Errorf("error line %q does not start with the key", l)
				}
				if strings.HasPrefix(l, tt.key+": ") && strings.Contains(l, tt.msg) {
					found = true
				}
			}
			if !found {
				t.Fatalf("Validate = %q; want a line %q: ...%s...", err, tt.key, tt.msg)
			}
		})
	}
}
