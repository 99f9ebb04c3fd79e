package icepolicy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
	"github.com/pion/webrtc/v4"
)

func TestForServer(t *testing.T) {
	for url, want := range map[string]bool{
		"http://127.0.0.1:7880":       true,
		"http://localhost:7880":       true,
		"https://10.0.2.2:7880":       true,
		"https://[fd00::5]/":          true,
		"https://192.168.1.20":        true,
		"https://livekit.clinic.test": false,
		"https://203.0.113.7":         false,
		"::not a url":                 false,
	} {
		if got := ForServer(url, false).AllowPrivate; got != want {
			t.Errorf("ForServer(%q).AllowPrivate = %v, want %v", url, got, want)
		}
	}
	if !ForServer("https://livekit.clinic.test", true).AllowPrivate {
		t.Error("the local config's allow_private_ice is not honoured")
	}
}

func TestCheckCandidate(t *testing.T) {
	cand := func(addr string) string {
		return fmt.Sprintf("candidate:1 1 udp 2130706431 %s 40000 typ host", addr)
	}
	for addr, refused := range map[string]bool{
		"203.0.113.7": false, "2001:db8::1": false, "198.51.100.1": false,
		"127.0.0.1": true, "10.1.2.3": true, "172.31.0.1": true, "192.168.0.9": true, "169.254.169.254": true,
		"::1": true, "fe80::1": true, "fd12::3": true, "0.0.0.0": true, "::": true, "224.0.0.251": true, "ff02::1": true,
		"::ffff:192.168.1.1": true, "unit.local": true, "internal.example": true,
	} {
		err := Policy{}.CheckCandidate(cand(addr))
		if (err != nil) != refused {
			t.Errorf("%s: err = %v, want refused=%v", addr, err, refused)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v does not wrap ErrRefused", addr, err)
		}
		if err := (Policy{AllowPrivate: true}).CheckCandidate(cand(addr)); err != nil && !strings.Contains(addr, "example") && !strings.Contains(addr, "local") {
			t.Errorf("%s with AllowPrivate: %v", addr, err)
		}
	}
	if err := (Policy{}).CheckCandidate("candidate:garbage"); err == nil {
		t.Error("an unparsable candidate passed")
	}
}

func TestServersCapped(t *testing.T) {
	var in []webrtc.ICEServer
	for i := 0; i < 100; i++ {
		in = append(in, webrtc.ICEServer{URLs: []string{fmt.Sprintf("turn:203.0.113.%d:3478", i), fmt.Sprintf("turns:203.0.113.%d:443?transport=tcp", i), "stun:10.0.0.1:3478"}})
	}
	kept, dropped := Policy{}.Servers(in)
	urls := 0
	for _, s := range kept {
		urls += len(s.URLs)
		for _, u := range s.URLs {
			if strings.Contains(u, "10.0.0.1") {
				t.Errorf("internal URL kept: %s", u)
			}
		}
	}
	if len(kept) > MaxServers || urls > MaxURLs || urls+dropped != 300 {
		t.Errorf("kept %d servers / %d URLs, dropped %d", len(kept), urls, dropped)
	}
}

func TestCandidatesPerGeneration(t *testing.T) {
	c := &Candidates{}
	sdp := func(ufrag string, n int) string {
		var b strings.Builder
		fmt.Fprintf(&b, "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:%s\r\n", ufrag)
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "a=candidate:%d 1 udp 2130706431 203.0.113.1 %d typ host\r\n", i, 10000+i)
		}
		// A bundled answer repeats its candidates under every m-line.
		b.WriteString("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n")
		for i := 0; i < 3; i++ {
			fmt.Fprintf(&b, "a=candidate:%d 1 udp 2130706431 203.0.113.1 %d typ host\r\n", i, 10000+i)
		}
		return b.String()
	}
	out, dropped, err := c.FilterSDP(sdp("a", 40))
	if got := strings.Count(out, "a=candidate:"); got != MaxCandidates+3 || dropped != 40-MaxCandidates || !errors.Is(err, ErrRefused) {
		t.Errorf("generation a: %d candidates kept, %d dropped, err %v", got, dropped, err)
	}
	if err := c.Take("", "candidate:99 1 udp 1 203.0.113.9 5 typ host"); err == nil {
		t.Error("a trickled candidate past the cap was taken")
	}
	out, dropped, _ = c.FilterSDP(sdp("b", 3))
	if got := strings.Count(out, "a=candidate:"); got != 6 || dropped != 0 {
		t.Errorf("a new ICE generation is not a new count: %d kept, %d dropped", got, dropped)
	}
}

func TestGuardNet(t *testing.T) {
	std, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	g := GuardNet(std, Policy{}, []string{"127.0.0.2"})
	for addr, refused := range map[string]bool{
		"224.0.0.0:5353":   false, // pion's own mDNS
		"203.0.113.5:3478": false, "127.0.0.1:3478": true, "10.0.0.1:3478": true, "[::1]:3478": true,
		"127.0.0.2:3478": false, // the operator's own server
	} {
		_, uerr := g.ResolveUDPAddr("udp", addr)
		_, terr := g.ResolveTCPAddr("tcp", addr)
		if (uerr != nil) != refused || (terr != nil) != refused {
			t.Errorf("%s: udp %v, tcp %v, want refused=%v", addr, uerr, terr, refused)
		}
	}
	if GuardNet(std, Policy{AllowPrivate: true}, nil) != transport.Net(std) {
		t.Error("AllowPrivate should leave the network as it is")
	}
}
