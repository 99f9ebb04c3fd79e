package icepolicy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/pion/transport/v5"
)

// mdnsGroups are the multicast addresses pion's mDNS resolves for itself
// (pion/mdns DefaultAddressIPv4/IPv6): the unit's own mDNS, not a target a
// server named.
var mdnsGroups = map[string]bool{"224.0.0.0:5353": true, "[FF02::]:5353": true}

// GuardNet wraps the network pion's ICE agent uses so that a STUN or TURN
// server named by a host name is refused when the name resolves to an
// address the policy refuses: the literal checks of Servers cannot see
// where "turn.evil.example" points. pion resolves every STUN and TURN
// server through ResolveUDPAddr or ResolveTCPAddr and then uses the
// resolved address, so the check holds for the address actually used.
// Hosts in trusted (the operator's own configured ICE servers) pass.
func GuardNet(inner transport.Net, p Policy, trusted []string) transport.Net {
	if p.AllowPrivate {
		return inner
	}
	t := map[string]bool{}
	for _, h := range trusted {
		t[strings.ToLower(strings.TrimSuffix(h, "."))] = true
	}
	return &guardNet{Net: inner, trusted: t}
}

type guardNet struct {
	transport.Net
	trusted map[string]bool
}

func (g *guardNet) check(address string, ip net.IP) error {
	if mdnsGroups[address] {
		return nil
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	if g.trusted[strings.ToLower(strings.TrimSuffix(host, "."))] {
		return nil
	}
	a, ok := netip.AddrFromSlice(ip)
	if ok && !internal(a) {
		return nil
	}
	return fmt.Errorf("%w: ICE server %s resolves to internal address %s", ErrRefused, host, ip)
}

func (g *guardNet) ResolveUDPAddr(network, address string) (*net.UDPAddr, error) {
	a, err := g.Net.ResolveUDPAddr(network, address)
	if err != nil {
		return nil, err
	}
	if err := g.check(address, a.IP); err != nil {
		return nil, err
	}
	return a, nil
}

func (g *guardNet) ResolveTCPAddr(network, address string) (*net.TCPAddr, error) {
	a, err := g.Net.ResolveTCPAddr(network, address)
	if err != nil {
		return nil, err
	}
	if err := g.check(address, a.IP); err != nil {
		return nil, err
	}
	return a, nil
}
