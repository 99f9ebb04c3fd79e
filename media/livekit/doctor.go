package livekit

import (
	"fmt"
	"net/url"
)

// Check is one line of the unit's self-check (roomctl doctor) about the
// conference connection. The caller maps it to its API's type.
type Check struct {
	Name   string
	OK     bool
	Detail string
	Fix    string
}

// HostChecks warns about what the conference server may aim the unit at:
// an empty allow-list (Config.AllowedHosts) and private ICE
// (Config.AllowPrivateICE). Warnings pass (the unit works), so they are OK
// checks whose detail says "warning:" and that carry a fix. The texts name
// the [conference] keys the installer sets.
func HostChecks(serverURL string, allowed []string, allowPrivateICE bool) []Check {
	var out []Check
	host := "livekit.clinic.example"
	if u, err := url.Parse(serverURL); err == nil && u.Hostname() != "" {
		host = u.Hostname()
	}
	if len(allowed) == 0 {
		out = append(out, Check{Name: "allowed hosts", OK: true,
			Detail: "warning: conference.allowed_hosts is empty: the server's redirects and session URLs may lead the unit over https to any host, internal addresses (10/8, 192.168/16 ...) included",
			Fix:    fmt.Sprintf("set conference.allowed_hosts = [%q] (and any other host of the conference service)", host)})
	}
	if allowPrivateICE {
		out = append(out, Check{Name: "private ice", OK: true,
			Detail: "warning: conference.allow_private_ice is on: the server may hand out TURN servers and candidates at internal addresses, and the unit connects there",
			Fix:    "keep it only for a media server on the clinic's own network; otherwise set conference.allow_private_ice = false"})
	}
	return out
}
