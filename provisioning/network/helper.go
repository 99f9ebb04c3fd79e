package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
)

// The network settings reach NetworkManager in two steps, because roomd runs
// as an unprivileged user and NetworkManager only reads keyfiles owned by
// root:
//
//  1. roomd renders the [network] section into unit.network_dir (its own
//     state, mode 0600 files) and writes a numbered "request" file
//     (Applier);
//  2. a root helper (konsult-network.path starts konsult-network.service,
//     which runs "roomd --apply-network DIR", RunHelper) copies the
//     konsult-* keyfiles into /etc/NetworkManager/system-connections, asks
//     NetworkManager to bring them up, and writes "result" with the same
//     number.
//
// roomd waits for the result; a failure fails the config apply, and the
// fleet agent rolls back to the last known good config, which puts the
// previous keyfiles back the same way. A config that activates but loses
// the broker rolls back too (fleet.confirm_timeout).

const (
	// RequestFile and ResultFile are the spool's two files besides the
	// keyfiles: the request number roomd writes, the helper's Result.
	RequestFile = "request"
	ResultFile  = "result"
	// helperWait bounds how long roomd waits for the helper:
	// NetworkManager may take a while to associate with Wi-Fi (the helper
	// waits 30 s per profile).
	helperWait = 3 * time.Minute
)

// Result is the helper's answer to the request with the same Seq.
type Result struct {
	Seq   uint64    `json:"seq"`
	OK    bool      `json:"ok"`
	Error string    `json:"error,omitempty"`
	At    time.Time `json:"at"`
}

// Applier applies [network] changes on the unprivileged side: it renders
// into Dir and, with Helper, hands the keyfiles to the root helper and
// waits for its answer. It is not safe for concurrent use.
type Applier struct {
	Dir    string // unit.network_dir
	Helper bool   // false: render only (--sim, or unit.network_apply = "none")

	applied *Config // nil until the first apply
	seq     uint64
}

// Apply makes NetworkManager run cfg. An unmanaged section that was never
// managed touches nothing: the unit keeps the OS's own network settings.
// id is the unit's identity for EAP-TLS. On failure the previous profiles
// are put back, the same way.
func (n *Applier) Apply(ctx context.Context, cfg Config, id Identity) error {
	if n.applied != nil && reflect.DeepEqual(*n.applied, cfg) {
		return nil
	}
	if !cfg.Managed() && (n.applied == nil || !n.applied.Managed()) {
		if prev, err := Current(n.Dir); err != nil || len(prev) == 0 {
			n.applied = &cfg
			return nil
		}
	}
	var files map[string][]byte
	if cfg.Managed() {
		var err error
		if files, err = Render(cfg, id); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	if err := os.MkdirAll(n.Dir, 0o700); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	prev, err := Current(n.Dir)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if _, err := Apply(n.Dir, files); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if n.Helper {
		if err := n.request(ctx); err != nil {
			// The caller keeps the previous config, so the network must go
			// back too: the previous profiles, handed over the same way.
			if _, rerr := Apply(n.Dir, prev); rerr != nil {
				return fmt.Errorf("%w; and the previous profiles could not be restored: %v", err, rerr)
			}
			if rerr := n.request(ctx); rerr != nil {
				return fmt.Errorf("%w; and NetworkManager did not take the previous profiles back: %v", err, rerr)
			}
			return err
		}
	}
	n.applied = &cfg
	return nil
}

// request asks the root helper to apply the spooled keyfiles and waits for
// its answer.
func (n *Applier) request(ctx context.Context) error {
	if n.seq == 0 {
		n.seq = uint64(time.Now().UnixNano()) // unique across restarts
	}
	n.seq++
	if err := atomicfile.Write(filepath.Join(n.Dir, RequestFile), []byte(strconv.FormatUint(n.seq, 10)+"\n"), 0o600); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, helperWait)
	defer cancel()
	for {
		b, err := os.ReadFile(filepath.Join(n.Dir, ResultFile))
		var r Result
		if err == nil && json.Unmarshal(b, &r) == nil && r.Seq == n.seq {
			if !r.OK {
				return fmt.Errorf("network: NetworkManager did not take the new settings: %s", r.Error)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("network: no answer from konsult-network.service within %s: check systemctl status konsult-network.path konsult-network.service", helperWait)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// RunHelper is "roomd --apply-network DIR", run as root by
// konsult-network.service: it copies DIR's konsult-* keyfiles to
// NetworkManager's directory nmDir, brings them up with nmcli ("": don't)
// and answers roomd.
//
// DIR belongs to roomd's user, who must not gain anything as root through
// it: every file is opened without following links and must be a regular
// file owned by that user (uid, or DIR's owner when uid < 0), within a size
// cap; every keyfile must be exactly what roomd's renderer writes for a
// valid [network] section (VerifyKeyfile). Anything else refuses the whole
// set, and the profiles installed before stay.
func RunHelper(ctx context.Context, dir, nmDir, nmcli string, uid int) error {
	sp, err := OpenSpool(dir, uid)
	if err != nil {
		return fmt.Errorf("apply-network: %w", err)
	}
	defer sp.Close()
	b, err := sp.ReadFile(RequestFile, 64)
	if err != nil {
		return fmt.Errorf("apply-network: %w", err)
	}
	seq, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return errors.New("apply-network: the request file does not hold a request number")
	}
	res := Result{Seq: seq, OK: true}
	if err := installSpooled(ctx, sp, nmDir, nmcli); err != nil {
		res.OK, res.Error = false, err.Error()
	}
	res.At = time.Now().UTC()
	out, _ := json.Marshal(res)
	if werr := sp.WriteFile(ResultFile, out, 0o644); werr != nil {
		return fmt.Errorf("apply-network: %w", werr)
	}
	if !res.OK {
		return errors.New(res.Error)
	}
	return nil
}

func installSpooled(ctx context.Context, sp *Spool, nmDir, nmcli string) error {
	files, err := sp.Keyfiles()
	if err != nil {
		return err
	}
	changed, err := Apply(nmDir, files)
	if err != nil {
		return err
	}
	if !changed || len(files) == 0 {
		if len(files) == 0 && changed && nmcli != "" {
			// Profiles removed: NetworkManager falls back to the OS's own.
			return NMCLI{Path: nmcli}.Activate(ctx, nil)
		}
		return nil
	}
	if nmcli == "" {
		return nil
	}
	return NMCLI{Path: nmcli}.Activate(ctx, IDs(files))
}
