// Package icepolicy bounds what a media server can make the unit do over
// ICE: how many STUN/TURN servers and remote candidates it may hand out, and
// which addresses they may name. Both conference connectors (WHIP and
// LiveKit's own signalling) apply the same policy, because a compromised or
// broken server otherwise aims the unit at any host and port it likes: pion
// opens a socket and a goroutine per TURN URL, and sends connectivity checks
// to every candidate (docs/LIMITS.md, "Connections").
package icepolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"sync"

	"github.com/pion/ice/v4"
	"github.com/pion/stun/v4"
	"github.com/pion/webrtc/v4"
)

// Limits on what a server may hand out. Real servers need far fewer: a
// LiveKit join response carries one or two ICE servers (its TURN over UDP
// and TLS), WHIP services a handful of Link headers (one STUN, TURN over
// UDP, TCP and TLS), and an SFU answers with 2 to 6 candidates per ICE
// generation (a host candidate per interface and protocol, an external IP).
const (
	MaxServers = 8  // ICE server entries taken from one server response
	MaxURLs    = 16 // URLs over all those entries
	// MaxCandidates is how many remote candidates one ICE generation (one
	// remote ufrag) may bring, from the SDP and from trickle together.
	MaxCandidates = 16
	// MaxLinkHeaderBytes bounds the WHIP Link header values read for ICE
	// servers (16 URLs with credentials are about 6 kB).
	MaxLinkHeaderBytes = 16 << 10
)

// ErrRefused is wrapped by every refusal of a server or candidate.
var ErrRefused = errors.New("refused by the unit's ICE policy")

// Policy says which addresses a server-supplied ICE server or candidate may
// name. The zero value refuses internal addresses.
type Policy struct {
	// AllowPrivate lets servers and candidates name loopback, link-local,
	// private (RFC 1918, ULA), unspecified and multicast addresses: a
	// media server on the unit itself or on the clinic's own network.
	AllowPrivate bool
}

// ForServer is the policy for a conference server at serverURL: internal
// addresses are allowed when the local configuration says so
// (allowPrivate), or when the server itself is named by "localhost" or an
// internal IP literal, since its own candidates then are internal too.
func ForServer(serverURL string, allowPrivate bool) Policy {
	if allowPrivate {
		return Policy{AllowPrivate: true}
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return Policy{}
	}
	return Policy{AllowPrivate: isInternalHost(u.Hostname())}
}

// isInternalHost reports whether host is "localhost" or an IP literal of a
// class a server must not aim the unit at.
func isInternalHost(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(strings.Trim(h, "[]"))
	if err != nil {
		return false
	}
	return internal(a)
}

// internal reports whether a is loopback, link-local, private, unspecified
// or multicast (IPv4-mapped addresses count as their IPv4 address).
func internal(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	return a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsPrivate() || a.IsUnspecified() || a.IsMulticast() || a.IsInterfaceLocalMulticast()
}

// CheckHost refuses a host (an IP literal or a name) the policy does not let
// a server name. Names other than "localhost" pass: they are resolved by
// pion, later.
func (p Policy) CheckHost(host string) error {
	if p.AllowPrivate {
		return nil
	}
	if isInternalHost(host) {
		return fmt.Errorf("%w: %s is an internal address (set conference.allow_private_ice = true for a media server on the local network)", ErrRefused, host)
	}
	return nil
}

// Servers keeps at most MaxServers entries and MaxURLs URLs of a
// server-supplied ICE server list, dropping every URL that does not parse
// or names a refused host. It returns what is kept and how many URLs were
// dropped.
func (p Policy) Servers(in []webrtc.ICEServer) (kept []webrtc.ICEServer, dropped int) {
	urls := 0
	for _, s := range in {
		var ok []string
		for _, raw := range s.URLs {
			if len(kept) >= MaxServers || urls >= MaxURLs {
				dropped++
				continue
			}
			u, err := stun.ParseURI(raw)
			if err != nil || p.CheckHost(u.Host) != nil {
				dropped++
				continue
			}
			ok = append(ok, raw)
			urls++
		}
		if len(ok) > 0 {
			s.URLs = ok
			kept = append(kept, s)
		}
	}
	return kept, dropped
}

// CheckCandidate parses one candidate ("candidate:..." with or without
// "a=") and refuses one that names a refused address or no IP at all: a
// media server has no use for mDNS or DNS names in its candidates.
func (p Policy) CheckCandidate(line string) error {
	_, err := p.candidate(line)
	return err
}

// candidate checks a candidate and returns the key it is counted by.
func (p Policy) candidate(line string) (string, error) {
	line = strings.TrimPrefix(strings.TrimSpace(line), "a=")
	c, err := ice.UnmarshalCandidate(line)
	if err != nil {
		return "", fmt.Errorf("%w: candidate does not parse", ErrRefused)
	}
	a, err := netip.ParseAddr(c.Address())
	if err != nil {
		return "", fmt.Errorf("%w: candidate names %q, not an IP address", ErrRefused, c.Address())
	}
	if !p.AllowPrivate && internal(a) {
		return "", fmt.Errorf("%w: candidate at internal address %s (set conference.allow_private_ice = true for a media server on the local network)", ErrRefused, a)
	}
	return fmt.Sprintf("%s %s %d", c.NetworkType(), a, c.Port()), nil
}

// Candidates counts the remote candidates of one peer connection per ICE
// generation and applies the policy to each. It is safe for concurrent use.
type Candidates struct {
	Policy Policy

	mu    sync.Mutex
	ufrag string
	seen  map[string]bool // address, port and transport of the taken ones
}

// Take reports whether one more remote candidate of the generation named
// by ufrag ("" for the current one) may be used: it must pass the policy
// and the generation must have room. The same address, port and transport
// again (a bundled answer repeats its candidates in every media section)
// counts once. A new ufrag starts a new count (an ICE restart drops the
// old generation's candidates).
func (c *Candidates) Take(ufrag, line string) error {
	key, err := c.Policy.candidate(line)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil || (ufrag != "" && ufrag != c.ufrag) {
		c.ufrag, c.seen = ufrag, map[string]bool{}
	}
	if c.seen[key] {
		return nil
	}
	if len(c.seen) >= MaxCandidates {
		return fmt.Errorf("%w: more than %d remote candidates in one ICE generation", ErrRefused, MaxCandidates)
	}
	c.seen[key] = true
	return nil
}

// FilterSDP removes from a remote description (or trickle-ice-sdpfrag)
// every candidate line the policy refuses or the generation has no room
// for, and returns the SDP and how many were removed with the first
// reason. Line endings are kept as they were.
func (c *Candidates) FilterSDP(sdp string) (string, int, error) {
	ufrag := ""
	for _, l := range strings.Split(sdp, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), "a=ice-ufrag:"); ok {
			ufrag = v
			break
		}
	}
	var b strings.Builder
	b.Grow(len(sdp))
	dropped := 0
	var first error
	rest := sdp
	for rest != "" {
		line, after, found := strings.Cut(rest, "\n")
		rest = after
		if strings.HasPrefix(line, "a=candidate:") {
			if err := c.Take(ufrag, strings.TrimRight(line, "\r")); err != nil {
				dropped++
				if first == nil {
					first = err
				}
				continue
			}
		}
		b.WriteString(line)
		if found {
			b.WriteByte('\n')
		}
	}
	return b.String(), dropped, first
}
