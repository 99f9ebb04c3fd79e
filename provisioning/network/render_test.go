package network

import (
	"bytes"
	"encoding/base64"
	"encoding/pem"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// parseKeyfile reads a keyfile into section → key → raw value.
func parseKeyfile(t testing.TB, b []byte) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	var sec map[string]string
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			sec = map[string]string{}
			out[line[1:len(line)-1]] = sec
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == nil {
				t.Fatalf("keyfile line %q is not key=value in a section", line)
			}
			if _, dup := sec[k]; dup {
				t.Fatalf("keyfile key %q twice", k)
			}
			sec[k] = v
		}
	}
	return out
}

func TestRender(t *testing.T) {
	p := newPKI(t)
	caDER, _ := pem.Decode([]byte(p.caPEM))
	caBlob := "data:;base64," + base64.StdEncoding.EncodeToString(caDER.Bytes)
	type kv = map[string]map[string]string
	tests := []struct {
		name string
		text string
		file string
		want kv // sections and keys that must be present with these values
		not  []string
	}{
		{"ethernet dhcp", "[network.ethernet]\n", "konsult-eth0.nmconnection", kv{
			"connection": {"id": "konsult-eth0", "type": "ethernet"},
			"ipv4":       {"method": "auto"},
			"ipv6":       {"method": "auto"},
		}, []string{"interface-name", "address1", "dns"}},
		{"ethernet static", "[network.ethernet]\ninterface = \"eth0\"\nmethod = \"static\"\naddress = \"192.168.10.20/24\"\ngateway = \"192.168.10.1\"\ndns = [\"192.168.10.1\", \"9.9.9.9\"]\n",
			"konsult-eth0.nmconnection", kv{
				"connection": {"id": "konsult-eth0", "interface-name": "eth0"},
				"ipv4":       {"method": "manual", "address1": "192.168.10.20/24,192.168.10.1", "dns": "192.168.10.1;9.9.9.9;"},
			}, nil},
		{"ethernet static no gateway", "[network.ethernet]\nmethod = \"static\"\naddress = \"10.0.0.5/8\"\n",
			"konsult-eth0.nmconnection", kv{"ipv4": {"method": "manual", "address1": "10.0.0.5/8"}}, []string{"dns="}},
		{"wpa2", "[[network.wifi]]\nssid = \"Clinic\"\nsecurity = \"wpa2-personal\"\npsk = \"12345678\"\npriority = 7\nhidden = true\n",
			"konsult-wifi-0.nmconnection", kv{
				"connection":    {"id": "konsult-wifi-0", "type": "wifi", "autoconnect-priority": "7"},
				"wifi":          {"ssid": "Clinic", "hidden": "true", "mode": "infrastructure"},
				"wifi-security": {"key-mgmt": "wpa-psk", "psk": "12345678"},
				"ipv4":          {"method": "auto"},
			}, []string{"802-1x", "pmf"}},
		{"wpa3", "[[network.wifi]]\nssid = \"Clinic\"\nsecurity = \"wpa3-personal\"\npsk = \" lead\\\\ing;\"\n",
			"konsult-wifi-0.nmconnection", kv{
				"wifi-security": {"key-mgmt": "sae", "pmf": "3", "psk": `\slead\\ing;`},
			}, []string{"hidden", "autoconnect-priority"}},
		{"peap", "[[network.wifi]]\nssid = \"Staff\"\nsecurity = \"enterprise\"\neap = \"peap\"\nidentity = \"room-3\"\nanonymous_identity = \"anon@clinic.example\"\npassword = \"pw\"\nca_cert = " + tomlString(p.caPEM) + "\ndomain_suffix_match = \"radius.clinic.example\"\n",
			"konsult-wifi-0.nmconnection", kv{
				"wifi-security": {"key-mgmt": "wpa-eap"},
				"802-1x": {"eap": "peap;", "identity": "room-3", "anonymous-identity": "anon@clinic.example", "password": "pw",
					"phase2-auth": "mschapv2", "ca-cert": caBlob, "domain-suffix-match": "radius.clinic.example"},
			}, []string{"psk", "client-cert", "private-key"}},
		{"tls", "[[network.wifi]]\nssid = \"Staff\"\nsecurity = \"enterprise\"\neap = \"tls\"\nca_cert = \"enrolment\"\ndomain_suffix_match = \"radius.clinic.example\"\n",
			"konsult-wifi-0.nmconnection", kv{
				"802-1x": {"eap": "tls;", "identity": "ku-abcdefghijklmnopqrst", "ca-cert": p.identity.CACert,
					"client-cert": p.identity.ClientCert, "private-key": p.identity.PrivateKey,
					"private-key-password-flags": "4", "domain-suffix-match": "radius.clinic.example"},
			}, []string{"password=", "phase2-auth", "psk"}},
		{"tls explicit identity", "[[network.wifi]]\nssid = \"Staff\"\nsecurity = \"enterprise\"\neap = \"tls\"\nidentity = \"unit@clinic\"\nca_cert = " + tomlString(p.caPEM) + "\ndomain_suffix_match = \"clinic.example\"\n",
			"konsult-wifi-0.nmconnection", kv{"802-1x": {"identity": "unit@clinic", "ca-cert": caBlob}}, nil},
		{"ssid with semicolon", "[[network.wifi]]\nssid = \" a;b\\\\c\"\nsecurity = \"wpa2-personal\"\npsk = \"12345678\"\n",
			"konsult-wifi-0.nmconnection", kv{"wifi": {"ssid": `\sa\\;b\\c`}}, nil},
		{"ssid utf-8", "[[network.wifi]]\nssid = \"Café\"\nsecurity = \"wpa2-personal\"\npsk = \"12345678\"\n",
			"konsult-wifi-0.nmconnection", kv{"wifi": {"ssid": "67;97;102;195;169;"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustDecode(t, tt.text)
			files, err := Render(c, p.identity)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if len(files) != 1 {
				t.Fatalf("Render made %v", IDs(files))
			}
			b, ok := files[tt.file]
			if !ok {
				t.Fatalf("Render made %v, not %s", IDs(files), tt.file)
			}
			kf := parseKeyfile(t, b)
			for sec, keys := range tt.want {
				for k, v := range keys {
					if got, ok := kf[sec][k]; !ok || got != v {
						t.Errorf("[%s] %s = %q (present %v), want %q", sec, k, got, ok, v)
					}
				}
			}
			for _, s := range tt.not {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("keyfile holds %q:\n%s", s, b)
				}
			}
			if kf["connection"]["uuid"] != stableUUID(kf["connection"]["id"]) {
				t.Errorf("uuid %q is not derived from the id", kf["connection"]["uuid"])
			}
		})
	}
}

func TestRenderFullConfigIsDeterministic(t *testing.T) {
	p := newPKI(t)
	c := mustDecode(t, fullConfigTOML(p))
	a, err := Render(c, p.identity)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(a))
	for n := range a {
		names = append(names, n)
	}
	sort.Strings(names)
	want := []string{"konsult-eth0.nmconnection", "konsult-wifi-0.nmconnection", "konsult-wifi-1.nmconnection", "konsult-wifi-2.nmconnection", "konsult-wifi-3.nmconnection"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("files %v, want %v", names, want)
	}
	for i := 0; i < 5; i++ {
		b, err := Render(mustDecode(t, fullConfigTOML(p)), p.identity)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatal("Render is not deterministic")
		}
	}
	uuids := map[string]bool{}
	uuidRE := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	for name, b := range a {
		kf := parseKeyfile(t, b)
		if id := kf["connection"]["id"]; id+Suffix != name || !Owned(name) {
			t.Errorf("%s: id %q", name, id)
		}
		u := kf["connection"]["uuid"]
		if !uuidRE.MatchString(u) || uuids[u] {
			t.Errorf("%s: uuid %q malformed or reused", name, u)
		}
		uuids[u] = true
	}
}

func TestRenderRefuses(t *testing.T) {
	p := newPKI(t)
	tls := "[[network.wifi]]\nssid = \"S\"\nsecurity = \"enterprise\"\neap = \"tls\"\nca_cert = \"enrolment\"\ndomain_suffix_match = \"r.example\"\n"
	noKey := p.identity
	noKey.PrivateKey = p.identity.PrivateKey + ".missing"
	relative := p.identity
	relative.ClientCert = "device.crt"
	pkcs11 := p.identity
	pkcs11.PrivateKey = "pkcs11:token=unit;object=key"
	tests := []struct {
		name string
		text string
		id   Identity
		want string
	}{
		{"invalid config", "[network.ethernet]\nmethod = \"x\"\n", p.identity, "network.ethernet.method"},
		{"not enrolled", tls, Identity{}, "enrol it first"},
		{"missing key", tls, noKey, "private key"},
		{"relative cert", tls, relative, "absolute path"},
		{"pkcs11 key is passed through", tls, pkcs11, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files, err := Render(mustDecode(t, tt.text), tt.id)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(files["konsult-wifi-0.nmconnection"]), "private-key=pkcs11:token=unit;object=key\n") {
					t.Fatalf("pkcs11 URI not written:\n%s", files["konsult-wifi-0.nmconnection"])
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Render error %v, want ...%s...", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") && tt.name != "invalid config" {
				t.Errorf("multi-line error %q", err)
			}
		})
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"plain":      "plain",
		"  two":      `\s\stwo`,
		"a b ":       "a b ",
		`back\slash`: `back\\slash`,
		"semi;colon": "semi;colon",
		"#hash=eq":   "#hash=eq",
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
}
