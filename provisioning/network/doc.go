// Package network turns the fleet config's [network] section into
// NetworkManager keyfiles, writes them atomically, and asks NetworkManager to
// use them. It touches only its own profiles: every file and connection id it
// makes starts with "konsult-", and every other profile on the unit (the
// image's own, an installer's) is left alone.
//
// # Config
//
// Embed Config in roomd's config as
//
//	Network network.Config `toml:"network"`
//
// An absent or empty [network] section is the default and means "leave the
// OS network config alone": Managed reports false, Render returns no files,
// and the caller should not call Apply at all (see "Letting go" below).
//
//	[network.ethernet]              # optional; absent = no konsult-eth0 profile
//	interface = "eth0"              # optional; empty = any wired device
//	method = "static"               # "dhcp" (default) or "static"
//	address = "192.168.10.20/24"    # static only: IPv4 address/prefix
//	gateway = "192.168.10.1"        # static only, optional
//	dns = ["192.168.10.1"]          # static only, optional
//
//	[[network.wifi]]                # zero or more (at most MaxWiFi)
//	ssid = "Clinic-Rooms"
//	security = "wpa2-personal"      # or "wpa3-personal" (SAE)
//	psk = "correct horse battery"   # 8–63 characters, or 64 hex digits (WPA2)
//	hidden = false
//	priority = 10                   # higher is tried first; -999..999
//
//	[[network.wifi]]
//	ssid = "Clinic-Staff"
//	security = "enterprise"         # WPA2/WPA3-Enterprise, 802.1X
//	eap = "peap"                    # PEAP-MSCHAPv2, or "tls" (unit certificate)
//	identity = "room-3"             # tls: optional, default the unit certificate's CN
//	anonymous_identity = "anonymous@clinic.example"  # optional outer identity
//	password = "..."                # peap only
//	ca_cert = """-----BEGIN CERTIFICATE-----..."""   # or "enrolment"
//	domain_suffix_match = "radius.clinic.example"
//
// 802.1X is only configured with server validation: ca_cert (one PEM
// certificate, the CA that issued the RADIUS server's certificate, or
// "enrolment" for the fleet CA the unit received at enrolment) and
// domain_suffix_match (the server certificate's name) are both required.
// Without them any access point could pose as the clinic's network and
// collect the unit's credentials (for PEAP-MSCHAPv2 the password can be
// cracked from what the unit sends).
//
// Validate checks everything Render relies on. Each error is one line that
// names the key and the fix, for example
//
//	network.wifi[0].psk: WPA2 passphrases are 8–63 printable ASCII characters (or 64 hex digits); check the passphrase
//
// and no error ever contains a secret's value.
//
// # Secrets
//
// The PSK and the PEAP password are of type Secret. A Secret prints as
// "(set)" (or "" when empty) with every fmt verb, and marshals as text
// (JSON, TOML) as "(set)" too; decoding the literal "(set)" back is an
// error, so a redacted config can never be applied by mistake. Only Render
// writes the real value, into the keyfile. Redacted returns a copy for
// reported state: secrets as "(set)"/"" and a PEM ca_cert as its SHA-256
// fingerprint.
//
// # Rendering and applying
//
// Render(c, id) returns keyfile name → contents: "konsult-eth0.nmconnection"
// and "konsult-wifi-<n>.nmconnection" (n is the index in [[network.wifi]]).
// The output is deterministic: each profile's [connection] id is the file
// name without ".nmconnection" and its UUID is derived from that id, so
// re-rendering the same config gives the same bytes and NetworkManager sees
// the same profile. Identity carries the paths of the unit's own
// certificate, key and fleet CA for EAP-TLS.
//
// Apply(dir, files) writes the files into dir (normally
// DefaultDir, /etc/NetworkManager/system-connections) one by one, each
// atomically (temporary file, fsync, rename, fsync of the directory) with
// mode 0600, then removes any other konsult-*.nmconnection file there.
// changed reports whether anything on disk changed. Files not named
// konsult-*.nmconnection are never touched. Current(dir) reads the konsult
// files now in dir, for the caller to keep as the rollback copy.
//
// NetworkManager ignores keyfiles that are not owned by root or are readable
// by group or others: Apply must run as root (or through a root helper).
//
// # The root helper's side
//
// roomd runs unprivileged and renders into a folder of its own; a root
// helper installs from there. That folder's owner is not trusted with root's
// powers, so the helper reads it through a Spool: OpenSpool refuses a
// folder that is a symbolic link, and Spool.Keyfiles opens each file
// relative to the folder with O_NOFOLLOW and O_NONBLOCK and accepts only
// regular, singly linked files owned by the folder's owner, at most
// MaxKeyfileSize bytes. Each keyfile must then pass VerifyKeyfile: it is
// parsed back into the typed config (only the sections and keys Render
// writes), validated like a fleet config, rendered again, and must come out
// byte for byte the same. A file path it names (the EAP-TLS certificate and
// key, the "enrolment" CA, all read by NetworkManager as root) must be one
// the folder's owner could read itself, reached through no symbolic link.
// One refusal refuses the set; the error names the file, line and key,
// never a value.
//
// # The apply/rollback sequence a caller follows
//
//	prev, err := network.Current(dir)              // rollback copy
//	files, err := network.Render(cfg.Network, id)  // after Validate
//	changed, err := network.Apply(dir, files)
//	if changed {
//		err = activator.Activate(ctx, cfg.Network.ConnectionIDs())
//	}
//	if err != nil (or the broker is unreachable afterwards) {
//		network.Apply(dir, prev)                   // put the old files back
//		activator.Activate(ctx, network.IDs(prev)) // and bring them up
//	}
//
// If Apply itself fails part-way some files may be new and some old; the
// rollback Apply(dir, prev) restores the previous set, since Apply is
// idempotent and removes konsult files that prev does not have.
//
// # Letting go
//
// When the fleet removes [network], Managed is false and roomd should leave
// the konsult files where they are (the unit keeps the network it has). To
// remove them explicitly, Apply(dir, nil) deletes every konsult-*.nmconnection
// file and nothing else.
//
// # Checked against NetworkManager
//
// The tests feed every rendered keyfile to NetworkManager's own keyfile
// parser and verifier through `nmcli --offline connection modify` (no
// daemon), and require every key written to come back with the same value:
// nmcli silently drops unknown keys and sections and falls back to defaults
// for unparsable booleans, so a clean exit status alone proves little.
package network
