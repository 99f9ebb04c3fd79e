package network

import (
	"strings"
	"testing"
)

// Everything Render writes passes VerifyKeyfile unchanged, and any
// change to a rendered keyfile that Render would not make is refused by
// line and key, without quoting the value.
func TestVerifyKeyfileRoundTrip(t *testing.T) {
	p := newPKI(t)
	configs := []string{
		fullConfigTOML(p),
		"[network.ethernet]\n",
		"[network.ethernet]\nmethod = \"static\"\naddress = \"10.0.0.5/8\"\n",
		"[[network.wifi]]\nssid = \"Caf\u00e9 \\\\ ;x\"\nsecurity = \"wpa2-personal\"\npsk = " + tomlString(strings.Repeat("ab", 32)) + "\n",
		"[[network.wifi]]\nssid = \" lead;\\\\;\"\nsecurity = \"wpa2-personal\"\npsk = \"12345678\"\n",
		"[[network.wifi]]\nssid = \"TLS\"\nsecurity = \"enterprise\"\neap = \"tls\"\nidentity = \"room-9\"\nca_cert = " + tomlString(p.caPEM) + "\ndomain_suffix_match = \"radius.clinic.example\"\n",
	}
	anyFile := func(string) error { return nil }
	n := 0
	for _, text := range configs {
		files, err := Render(mustDecode(t, text), p.identity)
		if err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			n++
			if err := VerifyKeyfile(name, b, anyFile); err != nil {
				t.Errorf("a keyfile Render wrote is refused: %v\n%s", err, b)
			}
		}
	}
	if n < 8 {
		t.Fatalf("only %d keyfiles checked", n)
	}

	files, err := Render(mustDecode(t, fullConfigTOML(p)), p.identity)
	if err != nil {
		t.Fatal(err)
	}
	eth, psk := string(files["konsult-eth0.nmconnection"]), string(files["konsult-wifi-0.nmconnection"])
	for _, c := range []struct {
		name, file, text, want string
	}{
		{"a route", "konsult-eth0.nmconnection", strings.Replace(eth, "method=manual\n", "method=manual\nroute1=0.0.0.0/0,6.6.6.6\n", 1), "[ipv4] route1 is not a key roomd writes"},
		{"an IPv6 DNS server", "konsult-eth0.nmconnection", strings.Replace(eth, "dns=192.168.10.1;9.9.9.9;", "dns=192.168.10.1;2001:db8::66;", 1), "network.ethernet.dns[1]"},
		{"a proxy section", "konsult-wifi-0.nmconnection", psk + "\n[proxy]\nmethod=auto\npac-url=http://evil.example/p\n", "section [proxy] is not one roomd writes"},
		{"a comment", "konsult-wifi-0.nmconnection", "# hello\n" + psk, "line 1: not a key=value line"},
		{"a key twice", "konsult-wifi-0.nmconnection", strings.Replace(psk, "[ipv4]\n", "[ipv4]\nmethod=manual\n", 1), "[ipv4] method appears twice"},
		{"an autoconnect-priority out of range", "konsult-wifi-0.nmconnection", strings.Replace(psk, "autoconnect-priority=10", "autoconnect-priority=5000", 1), "priority"},
		{"a wifi profile as eth0", "konsult-eth0.nmconnection", psk, "does not match the file name"},
		{"a phase2 key file", "konsult-wifi-2.nmconnection", strings.Replace(string(files["konsult-wifi-2.nmconnection"]), "phase2-auth=mschapv2\n", "phase2-auth=mschapv2\nphase2-private-key=/etc/ssl/private/x.key\n", 1), "[802-1x] phase2-private-key is not a key roomd writes"},
	} {
		err := VerifyKeyfile(c.file, []byte(c.text), anyFile)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", c.name, err, c.want)
			continue
		}
		// Validate may quote a non-secret value (an address it refuses);
		// what a key roomd never writes holds is never shown.
		for _, s := range append(allSecrets, "6.6.6.6", "evil.example", "/etc/ssl") {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%s: the error quotes %q: %v", c.name, s, err)
			}
		}
	}
}
