package main

import (
	"context"
	"path/filepath"

	"github.com/konsult/konsult/provisioning/network"
)

// netApplier applies [network] changes (holder.apply calls it before the
// unit is re-opened) through network.Applier and its root helper.
type netApplier struct {
	dir      string // unit.network_dir
	helper   bool   // false: render only (--sim, or unit.network_apply = "none")
	identity func(*Config) network.Identity
	a        *network.Applier
}

func networkDir(c *Config, simulate bool) string {
	if c.Unit.NetworkDir != "" {
		return c.Unit.NetworkDir
	}
	if simulate {
		return filepath.Join(filepath.Dir(c.API.Socket), "sim-network")
	}
	return "/var/lib/konsult/network"
}

// apply makes NetworkManager run full's [network] section.
func (n *netApplier) apply(ctx context.Context, full *Config) error {
	if n.a == nil {
		n.a = &network.Applier{Dir: n.dir, Helper: n.helper}
	}
	return n.a.Apply(ctx, full.Network, n.identity(full))
}

// applyNetworkHelper is "roomd --apply-network DIR" (network.RunHelper).
func applyNetworkHelper(ctx context.Context, dir, nmDir, nmcli string, uid int) error {
	return network.RunHelper(ctx, dir, nmDir, nmcli, uid)
}

// unitIdentity is what EAP-TLS uses: the enrolled identity, or the
// hand-installed certificate files.
func unitIdentity(p *provisioning, c *Config) network.Identity {
	if p != nil {
		return network.Identity{CACert: p.CAPath(), ClientCert: p.CertPath(), PrivateKey: p.KeyPath()}
	}
	return network.Identity{CACert: c.Fleet.CAFile, ClientCert: c.Fleet.CertFile, PrivateKey: c.Fleet.KeyFile}
}
