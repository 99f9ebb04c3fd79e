// Package report is the privacy report a clinic's data protection officer
// reads: every data flow of a unit, what is never stored and how that is
// enforced, the wiring checks, and the software and config in force. Every
// statement is derived from the config the unit runs on, the unit's state
// and this code (the telemetry fields by reflection over the documents the
// unit sends), never from a template that could drift: Build takes them
// and nothing else. Markdown and a self-contained, print-ready HTML page.
package report

import (
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
)

// Source is what a report is made from.
type Source struct {
	Config *config.Config
	// Unit is the unit's name in the fleet (device id), if known.
	Unit    string
	Version string
	// Generation is the config generation in force (0: local config
	// only); Pending and Deferred as in the reported document.
	Generation        uint64
	Pending, Deferred bool
	// Update is the update state in force ("" = this build installs no
	// updates itself).
	Update string
	// Checks are the unit's self-check (roomctl doctor), and when they
	// ran; nil: not run (a report made offline from a config file).
	Checks   []fleet.DoctorCheck
	ChecksAt time.Time
	// Audit is the audit log's high-water mark, if known.
	Audit *fleet.AuditReport
	// AuditLocalOnly: the fleet is off, and the unit keeps its audit log
	// for itself (agent.Standalone); nothing of it is sent.
	AuditLocalOnly bool
	// Calls are the calls the unit's audit log holds (call_joined
	// records), oldest first; nil: the log was not read.
	Calls []CallRecord
	// JournaldFiles are the journald drop-ins to read the log retention
	// from (DefaultJournald if nil).
	JournaldFiles []string
	// Now stamps the report.
	Now time.Time
}

// CallRecord is one call as the audit log has it: when it was joined, its
// pseudonymous meeting id, and whether it was end-to-end encrypted
// ("true", "false" or "unknown").
type CallRecord struct {
	At      time.Time
	Meeting string
	E2EE    string
}

// recentCalls is how many of the latest calls the report lists one by one.
const recentCalls = 20

// DefaultJournald is where the image installs journald's retention.
var DefaultJournald = []string{"/etc/systemd/journald.conf.d/konsult.conf"}

// Report is the privacy report.
type Report struct {
	Unit        string    `json:"unit,omitempty"`
	GeneratedAt time.Time `json:"generated_at"`
	Flows       []Flow    `json:"flows"`
	NeverStored []Claim   `json:"never_stored"`
	Checks      []Check   `json:"checks"`
	ChecksAt    time.Time `json:"checks_at,omitzero"`
	Software    []Item    `json:"software"`
	// Flags are what a DPO must look at: a media server outside the
	// declared regions, no declared region, E2EE off.
	Flags []string `json:"flags,omitempty"`
}

// Flow is one data flow out of (or kept on) the unit.
type Flow struct {
	Name  string `json:"name"`
	Items []Item `json:"items"`
	// Fields are the fields that leave the unit in this flow.
	Fields []Field `json:"fields,omitempty"`
}

// Item is one statement: a label and what holds.
type Item struct {
	Label string `json:"label"`
	Value string `json:"value"`
	Flag  bool   `json:"flag,omitempty"`
}

// Field is one field of a document the unit sends, and why the fleet
// needs it.
type Field struct {
	Doc     string `json:"doc"`
	Name    string `json:"name"`
	Purpose string `json:"purpose"`
}

// Claim is something never stored, and the tests that enforce it.
type Claim struct {
	Claim string   `json:"claim"`
	How   string   `json:"how"`
	Tests []string `json:"tests"`
}

// Check is one wiring or self-check line.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// E2EE says whether calls on c are end-to-end encrypted, from the config:
// "true" (connector livekit with conference.e2ee_key_file: every call),
// "per_consultation" (connector livekit on fleetd's tokens: each
// consultation with the key its grant carries, refused without one),
// "false", or "unknown" (no config). The audit log records what each call
// really was (the call's own E2EE).
func E2EE(c *config.Config) string {
	switch {
	case c == nil:
		return "unknown"
	case c.Conference.Connector != "livekit":
		return "false"
	case conferenceKey(c, "e2ee_key_file") != "" || conferenceKey(c, "e2ee") == "true":
		return "true"
	case c.Conference.APIKey == "" && c.Conference.Token == "" && c.Fleet.Enabled && c.Fleet.EnrolCert != "":
		return "per_consultation"
	}
	return "false"
}

// conferenceKey is the value of [conference] key name as text ("" if the
// schema has no such key): read by reflection, so the report follows the
// schema as it grows.
func conferenceKey(c *config.Config, name string) string {
	v := reflect.ValueOf(c.Conference)
	for i := 0; i < v.NumField(); i++ {
		if strings.Split(v.Type().Field(i).Tag.Get("toml"), ",")[0] != name {
			continue
		}
		switch f := v.Field(i); f.Kind() {
		case reflect.Bool:
			return strconv.FormatBool(f.Bool())
		case reflect.String:
			return f.String()
		}
	}
	return ""
}

// Build makes the report.
func Build(src Source) Report {
	c := src.Config
	r := Report{Unit: src.Unit, GeneratedAt: src.Now.UTC().Truncate(time.Second), ChecksAt: src.ChecksAt}
	if r.GeneratedAt.IsZero() {
		r.GeneratedAt = time.Now().UTC().Truncate(time.Second)
	}
	r.Flows = append(r.Flows, r.media(c), signalling(c), telemetry(c), logs(src), auditFlow(src))
	r.NeverStored = neverStored()
	if src.Checks == nil {
		r.Checks = []Check{{Name: "self-check", OK: false, Detail: "not run: this report was made from a config file, not from the running unit (roomctl privacy-report on the unit runs it)"}}
	}
	for _, ch := range src.Checks {
		r.Checks = append(r.Checks, Check{Name: ch.Name, OK: ch.OK, Detail: audit.Clean(ch.Detail)})
	}
	upd := src.Update
	if upd == "" {
		upd = "this build installs no updates by itself"
	}
	gen := "local config only (no fleet config applied)"
	if src.Generation > 0 {
		gen = itoa(src.Generation)
		if src.Pending {
			gen += " (pending: not yet confirmed by reaching the broker)"
		}
		if src.Deferred {
			gen += "; a newer config waits for the call to end"
		}
	}
	ver := src.Version
	if ver == "" {
		ver = "unknown (report made offline)"
	}
	r.Software = []Item{{"software version", ver, false}, {"config generation", gen, false}, {"update state", upd, false}}
	return r
}

func itoa(u uint64) string { return strconv.FormatUint(u, 10) }

// hostOf is a URL's host name.
func hostOf(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// region is host's declared region, and whether it is one the clinic
// declared; flag says why the DPO should look.
func region(c *config.Config, host string) (reg string, flag string) {
	reg = c.Privacy.HostRegions[host]
	switch {
	case reg == "":
		return "not declared", "media server " + host + " has no declared region (privacy.host_regions)"
	case len(c.Privacy.Regions) == 0:
		return reg, "the clinic has declared no regions (privacy.regions): nothing to check " + host + " against"
	case !slices.Contains(c.Privacy.Regions, reg):
		return reg, "media server " + host + " is in region " + reg + ", outside the clinic's declared regions (" + strings.Join(c.Privacy.Regions, ", ") + ")"
	}
	return reg, ""
}

func (r *Report) flag(s string) {
	if s != "" && !slices.Contains(r.Flags, s) {
		r.Flags = append(r.Flags, s)
	}
}

func (r *Report) media(c *config.Config) Flow {
	f := Flow{Name: "Media (camera and microphone)"}
	conn := c.Conference.Connector
	if conn == "" {
		f.Items = []Item{{"media server", "none configured: no call leaves the unit (with --sim, a simulated conference inside the unit)", false}}
		return f
	}
	host := hostOf(c.Conference.URL)
	reg, fl := region(c, host)
	r.flag(fl)
	f.Items = append(f.Items,
		Item{"media server", host + " (connector " + conn + ")", false},
		Item{"declared region", reg, fl != ""},
		Item{"transport encryption", "DTLS-SRTP on every media path, always (invariant 6); the join is refused if it cannot be set up", false})
	for _, h := range c.Conference.AllowedHosts {
		if h == host {
			continue
		}
		reg, fl := region(c, h)
		r.flag(fl)
		f.Items = append(f.Items, Item{"also allowed: " + h, "region " + reg, fl != ""})
	}
	if len(c.Conference.AllowedHosts) == 0 {
		f.Items = append(f.Items, Item{"allowed hosts", "no allow-list (conference.allowed_hosts is empty): the unit joins only the configured server", false})
	}
	switch e := E2EE(c); e {
	case "true":
		f.Items = append(f.Items, Item{"end-to-end encryption", "on for every call (the key in conference.e2ee_key_file)", false},
			Item{"who can decrypt", "only the participants holding that key: the media server forwards ciphertext", false})
	case "per_consultation":
		f.Items = append(f.Items, Item{"end-to-end encryption", "on for each consultation, with the key fleetd sends for it sealed to this unit; a consultation whose grant carries no key is refused, not sent without it", false},
			Item{"who can decrypt", "only the participants holding the consultation's key (the unit, and the patient through the link's key): the media server forwards ciphertext", false})
	default:
		r.flag("end-to-end encryption is off: the media server " + host + " can decrypt the media it forwards")
		f.Items = append(f.Items, Item{"end-to-end encryption", "off", true},
			Item{"who can decrypt", "the media server (" + host + ") and the far end: media is encrypted hop by hop, and decrypted at the server to forward it", false})
	}
	for _, s := range c.Conference.ICEServers {
		for _, u := range s.URLs {
			h := u
			if i := strings.IndexByte(h, ':'); i >= 0 {
				h = h[i+1:]
			}
			h, _, _ = strings.Cut(h, "?")
			if hh, _, err := net.SplitHostPort(h); err == nil {
				h = hh
			}
			f.Items = append(f.Items, Item{"relay (TURN/STUN)", h + ": sees only encrypted packets", false})
		}
	}
	f.Items = append(f.Items, Item{"when media flows", "only during a call, with the shutter confirmed open and privacy off (invariants 1 and 2); the LED says LIVE exactly then (3)", false})
	return f
}

func signalling(c *config.Config) Flow {
	f := Flow{Name: "Signalling"}
	if c.Conference.Connector == "" {
		f.Items = []Item{{"signalling", "none (no media server configured)", false}}
		return f
	}
	u, _ := url.Parse(c.Conference.URL)
	enc := "TLS (https/wss), the server's certificate checked"
	if u != nil && (u.Scheme == "http" || u.Scheme == "ws") {
		enc = "plain HTTP, allowed only because the server is on this machine (loopback)"
		if !isLoopback(u.Hostname()) {
			enc = "plain HTTP to a remote server: the unit refuses to join"
		}
	}
	how := map[string]string{"livekit": "LiveKit's own signalling (WebSocket)", "livekit-whip": "WHIP (RFC 9725) to LiveKit", "whip": "WHIP (RFC 9725)"}[c.Conference.Connector]
	f.Items = []Item{
		{"server", hostOf(c.Conference.URL), false},
		{"protocol", how, false},
		{"encryption", enc, false},
		{"credentials", "a short-lived room token per join (never logged, never in events or reported state: invariant 7)", false},
	}
	return f
}

// fieldPurpose says why the fleet needs each field of the documents the
// unit sends. TestEveryTelemetryFieldHasAPurpose fails when a field is
// added to fleet.StatusDoc or fleet.ReportedDoc without a line here: every
// field is reviewed before it leaves the unit.
var fieldPurpose = map[string]string{
	"status.online":                          "whether the unit is reachable (the broker's last will says offline)",
	"status.state":                           "idle, joining, in_call, leaving or fault: what a fleet manager watches",
	"status.version":                         "which software runs, for updates",
	"status.config_generation":               "which config runs",
	"status.at":                              "when this was true",
	"reported.device":                        "the unit's pseudonymous device id (a hash of its key)",
	"reported.groups":                        "which group configs apply",
	"reported.versions":                      "which signed config versions are applied",
	"reported.generation":                    "which config runs",
	"reported.pending":                       "a new config not yet confirmed",
	"reported.deferred":                      "a new config waiting for the call to end",
	"reported.last_rejection":                "the last config refused, and why (no values)",
	"reported.last_rejection.target":         "the config's target",
	"reported.last_rejection.version":        "its version",
	"reported.last_rejection.reason":         "why, as a reason code",
	"reported.last_rejection.message":        "how to fix it, without values",
	"reported.last_rejection.at":             "when",
	"reported.last_rollback":                 "the last automatic rollback",
	"reported.last_rollback.from_generation": "from which config",
	"reported.last_rollback.to_generation":   "to which config",
	"reported.last_rollback.reason":          "why",
	"reported.last_rollback.versions":        "the versions undone",
	"reported.last_rollback.at":              "when",
	"reported.update":                        "the system update state, for the rollout's waves",
	"reported.update.phase":                  "where the update helper is (idle, downloading, verifying, installing, installed, rebooting)",
	"reported.update.booted_slot":            "which root slot runs",
	"reported.update.booted_version":         "the system version it runs",
	"reported.update.slots":                  "the version in each root slot",
	"reported.update.pending_version":        "the version installed and waiting for its boot",
	"reported.update.pending_slot":           "the slot it went into",
	"reported.update.requested":              "the version of the last update command taken",
	"reported.update.deferred":               "the update waits for the call to end",
	"reported.update.reboot_waiting":         "the reboot waits for idle or the maintenance window",
	"reported.update.last_failure":           "why the last update failed",
	"reported.update.last_failure_at":        "when",
	"reported.update.last_good_version":      "the last version that passed its health check",
	"reported.update.rolled_back":            "the last update the unit undid by itself",
	"reported.update.rolled_back.version":    "which version",
	"reported.update.rolled_back.slot":       "from which slot",
	"reported.update.rolled_back.reason":     "why",
	"reported.update.rolled_back.at":         "when",
	"reported.identity":                      "the unit's certificate, for renewal",
	"reported.identity.serial":               "the certificate's serial",
	"reported.identity.not_after":            "when it expires",
	"reported.identity.renewal_csr":          "a renewal request (public key only) when due",
	"reported.identity.last_renewal_error":   "why the last renewal failed",
	"reported.audit":                         "the audit log's high-water mark, to find gaps",
	"reported.audit.chain":                   "the audit chain's random id",
	"reported.audit.sent":                    "the last record sent",
	"reported.audit.head":                    "the last record written",
	"reported.audit.head_hash":               "its hash",
	"reported.at":                            "when this was true",
}

// TelemetryFields lists every field of the documents the unit sends, by
// reflection over the types the agent sends (fleet.StatusDoc,
// fleet.ReportedDoc), with its purpose ("" if none is written down).
func TelemetryFields() []Field {
	var out []Field
	walk(&out, "status", reflect.TypeOf(fleet.StatusDoc{}))
	walk(&out, "reported", reflect.TypeOf(fleet.ReportedDoc{}))
	return out
}

func walk(out *[]Field, prefix string, t reflect.Type) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name := strings.Split(sf.Tag.Get("json"), ",")[0]
		if name == "-" || name == "" {
			continue
		}
		key := prefix + "." + name
		doc, _, _ := strings.Cut(key, ".")
		*out = append(*out, Field{Doc: doc, Name: strings.TrimPrefix(key, doc+"."), Purpose: fieldPurpose[key]})
		ft := sf.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Time{}) {
			walk(out, key, ft)
		}
	}
}

func telemetry(c *config.Config) Flow {
	f := Flow{Name: flowTelemetry}
	broker := hostOf(c.Fleet.Broker)
	switch {
	case !c.Fleet.Enabled || c.Fleet.Broker == "" && c.Fleet.EnrolCert == "":
		broker = "none: the fleet is off (with --sim, a demo broker inside the unit)"
	case broker == "":
		broker = "not set"
	}
	f.Items = []Item{
		{"broker", broker, false},
		{"transport", "MQTT over TLS with the unit's client certificate; the broker's ACL confines the unit to its own topics", false},
		{labelBrokerKeeps, "status and reported state: the latest value only (retained), replaced at each change; events and audit records: queued for their readers, up to 100,000 messages and 64 MiB a reader (mosquitto.conf max_queued_messages, max_queued_bytes), a disconnected reader's queue dropped after 30 days (persistent_client_expiration): the shipped deploy/mosquitto/mosquitto.conf; fleetctl privacy-report --broker-config states the broker's own", false},
		{labelFleetdKeeps, "audit records: kept by fleetd for its [retention] audit (365 days unless the fleet manager set another), pruned only as far as the unit's own checkpoints account for; its log of tokens issued for [retention] records (90 days by default); events are not stored by the fleet service (fleetctl watch shows them live); fleetctl privacy-report --fleetd-config states fleetd's own", false},
		{"events", "state, call joined/left (pseudonymous meeting id), button, fault, config and command outcomes: never a name, token or far-end address (invariant 7)", false},
		{"queue on the unit", "events and audit records wait on disk while the broker is away, at most 10,000 (link.DefaultMaxQueued); past that a new event is dropped and audit records stay in the audit log", false},
	}
	f.Fields = TelemetryFields()
	return f
}

// journald reads retention keys from the drop-ins.
func journald(files []string) (where string, items []Item) {
	keys := map[string]string{}
	var found []string
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		found = append(found, p)
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
				keys[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
	}
	if len(found) == 0 {
		return "", []Item{{"system log retention", "no Konsult journald drop-in found (" + strings.Join(files, ", ") + "): the system's journald defaults apply", true}}
	}
	for _, k := range []string{"Storage", "MaxRetentionSec", "SystemMaxUse", "SystemMaxFileSize", "MaxFileSec"} {
		if v, ok := keys[k]; ok {
			items = append(items, Item{"journald " + k, v, false})
		}
	}
	if _, ok := keys["MaxRetentionSec"]; !ok {
		items = append(items, Item{"journald MaxRetentionSec", "not set: no age limit", true})
	}
	return strings.Join(found, ", "), items
}

func logs(src Source) Flow {
	files := src.JournaldFiles
	if files == nil {
		files = DefaultJournald
	}
	where, items := journald(files)
	f := Flow{Name: "Logs"}
	f.Items = append(f.Items, Item{"where", "the unit's system journal (roomd logs to stderr, which systemd keeps); on the unit only, not sent to the fleet", false})
	if where != "" {
		f.Items = append(f.Items, Item{"retention from", where, false})
	}
	f.Items = append(f.Items, items...)
	f.Items = append(f.Items,
		Item{"log level", c(src).Log.Level, false},
		Item{"content", "state changes, faults, config and fleet outcomes; never tokens, keys, claim codes, Wi-Fi passwords or names (invariant 7)", false},
		Item{"factory reset", "the journal is vacuumed (konsult-reset.service)", false})
	return f
}

func c(src Source) *config.Config { return src.Config }

func auditFlow(src Source) Flow {
	cfg := src.Config
	ret := cfg.Audit.Retention.Duration
	f := Flow{Name: "Audit log"}
	where := "on the unit (" + cfg.StateDir(false) + "/audit), each record hash-chained to the one before and signed with the unit's own key; sent to the fleet service on the unit's audit topic"
	if src.AuditLocalOnly {
		where = "on the unit only (" + cfg.StateDir(false) + "/audit): the fleet is off and nothing of it is sent; each record hash-chained to the one before and signed with the unit's own key (the key it would enrol with, so the chain goes on if it joins a fleet)"
	}
	f.Items = []Item{
		{"what", "security-relevant events: calls joined and left (pseudonymous meeting id, whether end-to-end encrypted), privacy and mute, configs applied/rejected/rolled back, commands, enrolment, renewal, revocation, factory reset, faults, updates; no names, no URLs with tokens, no far-end addresses", false},
		{"where", where, false},
		{"retention on the unit", formatDays(ret) + " or " + formatBytes(cfg.Audit.MaxBytes) + ", whichever comes first; pruning leaves a signed checkpoint so the rest still verifies", false},
		{"verify", "roomctl audit verify on the unit (its own log); fleetctl audit verify --unit ID (the fleet's copy) or --file (an export or the unit's file): names the first edited, deleted, reordered or inserted record and any gap", false},
		{"factory reset", "starts a new chain whose first record says a reset happened; the old identity is not carried over", false},
	}
	if a := src.Audit; a != nil {
		v := a.Chain + ": " + itoa(a.Head) + " records written, " + itoa(a.Sent) + " handed to the fleet link"
		if src.AuditLocalOnly {
			v = a.Chain + ": " + itoa(a.Head) + " records written, kept on the unit only"
		}
		f.Items = append(f.Items, Item{"chain in force", v, false})
	}
	if src.Calls != nil {
		f.Items = append(f.Items, callItems(src.Calls)...)
	}
	return f
}

// callItems says which past calls were end-to-end encrypted, from the
// audit log: a count, then the latest calls one by one. A call that was
// not encrypted end to end is flagged.
func callItems(calls []CallRecord) []Item {
	var on, off, unknown uint64
	for _, c := range calls {
		switch c.E2EE {
		case "true":
			on++
		case "false":
			off++
		default:
			unknown++
		}
	}
	summary := itoa(uint64(len(calls))) + " in the audit log: " + itoa(on) + " end-to-end encrypted, " + itoa(off) + " encrypted hop by hop only (the media server could decrypt them)"
	if unknown > 0 {
		summary += ", " + itoa(unknown) + " not recorded"
	}
	if len(calls) > 0 {
		summary += "; since " + calls[0].At.UTC().Format("2006-01-02 15:04 UTC")
	}
	items := []Item{{"past calls", summary, off > 0}}
	start := max(0, len(calls)-recentCalls)
	for _, c := range calls[start:] {
		what := map[string]string{"true": "end-to-end encrypted", "false": "not end-to-end encrypted"}[c.E2EE]
		if what == "" {
			what = "encryption not recorded"
		}
		items = append(items, Item{"call " + c.At.UTC().Format("2006-01-02 15:04 UTC"), "meeting " + c.Meeting + ": " + what, c.E2EE == "false"})
	}
	return items
}

func formatDays(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return itoa(uint64(d/(24*time.Hour))) + " days"
	}
	return d.String()
}

func formatBytes(n int64) string {
	switch {
	case n%(1<<20) == 0:
		return itoa(uint64(n>>20)) + " MiB"
	case n%(1<<10) == 0:
		return itoa(uint64(n>>10)) + " KiB"
	}
	return itoa(uint64(n)) + " bytes"
}

// neverStored are the claims and the tests that enforce them;
// TestNamedTestsExist checks each named test is in the repository.
func neverStored() []Claim {
	return []Claim{
		{"No recording feature", "the config schema has no key that records, stores or saves media (checked over the schema by reflection)", []string{"appliance/report.TestNoRecordingKey"}},
		{"No media on disk", "no package on the media path opens a file for writing (checked over their source); far-end playout without a sound card measures and discards (invariant 5)", []string{"appliance/report.TestMediaPathWritesNoFiles"}},
		{"Secrets out of logs, events, reported state and errors", "tokens, keys and secrets are cut out before anything is logged or sent (invariant 7)", []string{"appliance/agent.TestSecretsNeverLeave", "cmd/roomd.TestFleetSecretsNeverLeave", "media/whip.TestTokenNeverLeaks", "provisioning/audit.TestCleanKeepsSecretsOut"}},
	}
}
