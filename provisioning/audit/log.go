package audit

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/provisioning/identity"
)

// File names in the log's directory.
const (
	LogFile = "audit.jsonl"
	// ResetFile is the name a factory reset leaves its mark under
	// (MarkReset), beside the identity directory: the next chain's first
	// record says a reset happened. It holds the time of the reset only,
	// nothing of the old identity.
	ResetFile = "audit-reset"
)

// Defaults of the retention policy (appliance/config [audit]).
const (
	DefaultRetention = 90 * 24 * time.Hour
	DefaultMaxBytes  = 4 << 20
)

// Options configures a Log.
type Options struct {
	// Dir holds the log (LogFile), mode 0700.
	Dir string
	// Signer is the unit's key (its certificate's, provisioning/identity).
	// Its public half must be ECDSA.
	Signer crypto.Signer
	// Retention: records older than this are pruned (DefaultRetention if
	// 0).
	Retention time.Duration
	// MaxBytes bounds the file: past it the oldest records are pruned
	// until it is at most three quarters full (DefaultMaxBytes if 0).
	MaxBytes int64
	// Now is the clock (time.Now if nil).
	Now func() time.Time
	// ResetMark is where a factory reset leaves its mark (MarkReset); ""
	// for none. A new chain that finds it starts with reason
	// factory_reset, and removes it.
	ResetMark string
}

// Log is the unit's audit log. Its methods are safe for concurrent use.
type Log struct {
	o      Options
	pub    *ecdsa.PublicKey
	key    string // EncodeKey(pub)
	device string
	path   string

	mu      sync.Mutex
	recs    []Record // what the file holds, oldest first
	size    int64
	f       *os.File
	notify  []chan struct{}
	started string // why this chain began, if it began at this Open
}

// MarkReset records at path that a factory reset happened (appliance/unit
// calls it after wiping the identity and state directories).
func MarkReset(path string, at time.Time) error {
	if err := atomicfile.Write(path, []byte(at.UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// Open opens the log in o.Dir, starting a new chain if there is none (or
// the one there was made with another key), and prunes it.
func Open(o Options) (*Log, error) {
	if o.Signer == nil {
		return nil, errors.New("audit: no signing key")
	}
	pub, ok := o.Signer.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("audit: the unit's key is a %T, not ECDSA", o.Signer.Public())
	}
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	key, err := EncodeKey(pub)
	if err != nil {
		return nil, err
	}
	dev, err := identity.DeviceID(pub)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	l := &Log{o: o, pub: pub, key: key, device: dev, path: filepath.Join(o.Dir, LogFile)}
	reason, err := l.load()
	if err != nil {
		return nil, err
	}
	if err := l.openFile(); err != nil {
		return nil, err
	}
	if reason != "" {
		if _, err := os.Stat(o.ResetMark); o.ResetMark != "" && err == nil {
			reason = "factory_reset"
		}
		l.started = reason
		if _, err := l.appendLocked(KindChainStarted, map[string]string{"reason": reason, "key": key, "device": dev}, randomChain()); err != nil {
			l.f.Close()
			return nil, err
		}
		if o.ResetMark != "" {
			_ = os.Remove(o.ResetMark)
		}
	}
	l.mu.Lock()
	err = l.pruneLocked()
	l.mu.Unlock()
	if err != nil {
		l.f.Close()
		return nil, err
	}
	return l, nil
}

func randomChain() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// load reads the file. It returns why a new chain must start ("" if the
// file continues): first_start, key_changed or log_unreadable. A torn last
// line (a crash mid-write) is dropped.
func (l *Log) load() (string, error) {
	b, err := os.ReadFile(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return "first_start", nil
	}
	if err != nil {
		return "", fmt.Errorf("audit: %w", err)
	}
	var recs []Record
	good := 0
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if !bytes.HasSuffix(line, []byte("\n")) {
			break // torn
		}
		r, err := Parse(bytes.TrimSpace(line))
		if err != nil {
			break
		}
		recs = append(recs, r)
		good += len(line)
	}
	if len(recs) == 0 {
		return l.setAside("log_unreadable")
	}
	// The chain must be ours: its key record names our key.
	ours := false
	for _, r := range recs {
		if (r.Kind == KindChainStarted || r.Kind == KindCheckpoint) && r.Fields["key"] == l.key {
			ours = true
			break
		}
	}
	if !ours || !recs[len(recs)-1].VerifySig(l.pub) {
		return l.setAside("key_changed")
	}
	if good < len(b) {
		if err := os.Truncate(l.path, int64(good)); err != nil {
			return "", fmt.Errorf("audit: drop a torn record: %w", err)
		}
	}
	l.recs, l.size = recs, int64(good)
	return "", nil
}

// setAside keeps a log the unit cannot continue (another key's, or
// unreadable) beside the new one for the fleet manager to look at.
func (l *Log) setAside(reason string) (string, error) {
	aside := l.path + "." + time.Now().UTC().Format("20060102T150405") + ".old"
	if err := os.Rename(l.path, aside); err != nil {
		return "", fmt.Errorf("audit: set aside the old log: %w", err)
	}
	return reason, nil
}

func (l *Log) openFile() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	l.f = f
	return nil
}

// Close closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Device is the device id the log's key makes.
func (l *Log) Device() string { return l.device }

// StartedBecause is why the chain began at this Open ("" if it went on):
// first_start, factory_reset, key_changed, log_unreadable.
func (l *Log) StartedBecause() string { return l.started }

// Append adds a record of kind with fields (each passed through Clean),
// writes it to disk (fsync) and returns it.
func (l *Log) Append(kind string, fields map[string]string) (Record, error) {
	clean := make(map[string]string, len(fields))
	for k, v := range fields {
		clean[k] = Clean(v)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return Record{}, errors.New("audit: log closed")
	}
	r, err := l.appendLocked(kind, clean, "")
	if err != nil {
		return r, err
	}
	if err := l.pruneLocked(); err != nil {
		return r, err
	}
	return r, nil
}

func (l *Log) appendLocked(kind string, fields map[string]string, newChain string) (Record, error) {
	r := Record{Time: l.o.Now().UTC().Truncate(time.Millisecond), Kind: kind, Fields: fields}
	if len(r.Fields) == 0 {
		r.Fields = nil
	}
	if newChain != "" {
		r.Chain, r.Seq = newChain, 1
		l.recs = nil
		l.size = 0
		if err := l.f.Truncate(0); err != nil {
			return r, fmt.Errorf("audit: %w", err)
		}
	} else {
		last := l.recs[len(l.recs)-1]
		r.Chain, r.Seq, r.Prev = last.Chain, last.Seq+1, last.Hash()
	}
	if err := r.sign(l.o.Signer); err != nil {
		return r, err
	}
	line := append(r.Line(), '\n')
	if _, err := l.f.Write(line); err != nil {
		return r, fmt.Errorf("audit: write: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return r, fmt.Errorf("audit: write: %w", err)
	}
	l.recs = append(l.recs, r)
	l.size += int64(len(line))
	for _, ch := range l.notify {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return r, nil
}

// pruneLocked applies the retention policy: records older than Retention
// go, and past MaxBytes the oldest go until the file is at most three
// quarters of it; the newest record always stays. A prune rewrites the
// file (temp, fsync, rename) and appends a checkpoint naming the last
// record dropped, so the rest still verifies.
func (l *Log) pruneLocked() error {
	cut := l.o.Now().Add(-l.o.Retention)
	drop := 0
	policy := ""
	for drop < len(l.recs)-1 && l.recs[drop].Time.Before(cut) {
		drop++
		policy = "age"
	}
	if l.size > l.o.MaxBytes {
		target := l.o.MaxBytes * 3 / 4
		size := l.size
		for i := 0; i < drop; i++ {
			size -= int64(len(l.recs[i].Line()) + 1)
		}
		for drop < len(l.recs)-1 && size > target {
			size -= int64(len(l.recs[drop].Line()) + 1)
			drop++
			policy = "size"
		}
	}
	if drop == 0 {
		return nil
	}
	last := l.recs[drop-1]
	keep := l.recs[drop:]
	var buf bytes.Buffer
	for _, r := range keep {
		buf.Write(r.Line())
		buf.WriteByte('\n')
	}
	if err := atomicfile.Write(l.path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("audit: prune: %w", err)
	}
	_ = l.f.Close()
	if err := l.openFile(); err != nil {
		return err
	}
	l.recs = append([]Record(nil), keep...)
	l.size = int64(buf.Len())
	_, err := l.appendLocked(KindCheckpoint, map[string]string{
		"pruned_through": strconv.FormatUint(last.Seq, 10),
		"pruned_hash":    last.Hash(),
		"pruned":         strconv.Itoa(drop),
		"policy":         policy,
		"key":            l.key,
	}, "")
	return err
}

// Records is a copy of what the log holds, oldest first.
func (l *Log) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Record, len(l.recs))
	for i, r := range l.recs {
		r.Fields = maps.Clone(r.Fields)
		out[i] = r
	}
	return out
}

// After returns the records with Seq above seq, oldest first.
func (l *Log) After(seq uint64) []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Record
	for _, r := range l.recs {
		if r.Seq > seq {
			out = append(out, r)
		}
	}
	return out
}

// Head is the newest record.
func (l *Log) Head() Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recs[len(l.recs)-1]
}

// Size is the file's size in bytes.
func (l *Log) Size() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}

// Policy is the log's retention policy, for the privacy report.
func (l *Log) Policy() (retention time.Duration, maxBytes int64) {
	return l.o.Retention, l.o.MaxBytes
}

// Notify returns a channel that receives (coalesced) after each append.
func (l *Log) Notify() <-chan struct{} {
	ch := make(chan struct{}, 1)
	l.mu.Lock()
	l.notify = append(l.notify, ch)
	l.mu.Unlock()
	return ch
}

// ReadFile reads a log file (the unit's, or an export) as it stands, in
// file order, for Verify. Unparseable lines are errors naming the line.
func ReadFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		r, err := Parse(line)
		if err != nil {
			return nil, fmt.Errorf("audit: %s line %d: %w", path, n, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}
