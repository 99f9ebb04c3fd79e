package fleetd

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the pure-Go SQLite driver, "sqlite"
)

// migrations are the schema's versions, in order; PRAGMA user_version is
// how many have run. Append, never edit: a database made by an older fleetd
// is brought up to date by running the ones it lacks.
var migrations = []string{
	// 1: consultations, the tokens issued, renewals answered.
	`CREATE TABLE consultations (
		id TEXT PRIMARY KEY,
		unit TEXT NOT NULL,
		room TEXT NOT NULL UNIQUE,
		starts_at INTEGER NOT NULL,
		ends_at INTEGER NOT NULL,
		patient_secret_hash BLOB NOT NULL,
		source_uid TEXT,
		created_at INTEGER NOT NULL,
		cancelled_at INTEGER
	);
	CREATE INDEX consultations_unit_end ON consultations(unit, ends_at);
	CREATE UNIQUE INDEX consultations_source_uid ON consultations(source_uid) WHERE source_uid IS NOT NULL;
	CREATE TABLE tokens_issued (
		id INTEGER PRIMARY KEY,
		unit TEXT NOT NULL,
		consultation TEXT NOT NULL,
		room TEXT NOT NULL,
		issued_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL
	);
	CREATE INDEX tokens_issued_unit ON tokens_issued(unit, issued_at);
	CREATE TABLE renewals (
		unit TEXT PRIMARY KEY,
		csr_sha256 TEXT NOT NULL,
		answered_at INTEGER NOT NULL,
		error TEXT
	);`,
	// 2: the units' audit records (provisioning/audit) as they arrived,
	// and each unit's audit high-water mark from its reported state.
	`CREATE TABLE audit_records (
		id INTEGER PRIMARY KEY,
		unit TEXT NOT NULL,
		chain TEXT NOT NULL,
		seq INTEGER NOT NULL,
		hash TEXT NOT NULL,
		line TEXT NOT NULL,
		received_at INTEGER NOT NULL,
		UNIQUE (unit, chain, seq, hash)
	);
	CREATE INDEX audit_records_unit ON audit_records(unit, chain, seq);
	CREATE TABLE audit_marks (
		unit TEXT PRIMARY KEY,
		chain TEXT NOT NULL,
		sent INTEGER NOT NULL,
		head INTEGER NOT NULL,
		head_hash TEXT NOT NULL,
		at INTEGER NOT NULL
	);`,
	// 3: each consultation's end-to-end key material K (32 bytes), kept
	// until its window ends (PurgeKeys), then NULL; and the patient page's
	// token exchanges (no token, no address: when, for which consultation).
	`ALTER TABLE consultations ADD COLUMN e2ee_key BLOB;
	CREATE TABLE patient_joins (
		id INTEGER PRIMARY KEY,
		consultation TEXT NOT NULL,
		identity TEXT NOT NULL,
		issued_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL
	);
	CREATE INDEX patient_joins_consultation ON patient_joins(consultation, issued_at);`,
}

// Store is fleetd's database.
type Store struct {
	db *sql.DB
}

// Consultation is one booked consultation. The patient is not in it: only
// the hash of the per-consultation patient secret is kept.
type Consultation struct {
	ID          string     `json:"id"`
	Unit        string     `json:"unit"`
	Room        string     `json:"room"`
	Start       time.Time  `json:"start"`
	End         time.Time  `json:"end"`
	SourceUID   string     `json:"source_uid,omitempty"`
	Created     time.Time  `json:"created"`
	CancelledAt *time.Time `json:"cancelled_at,omitempty"`

	// e2eeKey is K, set only by AddConsultation (for the link, shown once);
	// never marshalled.
	e2eeKey []byte
}

// E2EEKeySize is the size of a consultation's key material K.
const E2EEKeySize = 32

// OpenStore opens (creating if need be) the database at path and brings
// its schema up to date.
func OpenStore(path string) (*Store, error) {
	// WAL lets fleetctl-driven writes and token lookups go on together;
	// busy_timeout rides out the rare overlap instead of failing.
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)")
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	db.SetMaxOpenConns(1) // one writer; SQLite serialises anyway
	s := &Store{db: db}
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Version is the schema version.
func (s *Store) Version() (int, error) {
	var v int
	err := s.db.QueryRow("PRAGMA user_version").Scan(&v)
	return v, err
}

func (s *Store) migrate() error {
	v, err := s.Version()
	if err != nil {
		return fmt.Errorf("schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this fleetd knows (%d): run the fleetd that made it, or restore a backup", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		tx, err := s.db.Begin()
		if err != nil {
			return err
		}
		if _, err := tx.Exec(migrations[i]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if _, err := tx.Exec(fmt.Sprintf("PRAGMA user_version = %d", i+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	return nil
}

// randomID is n random bytes as lowercase base32: room names and
// consultation ids that say nothing about who or when.
func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

func hashSecret(secret string) []byte {
	s := sha256.Sum256([]byte("konsult-patient-secret-v1\n" + secret))
	return s[:]
}

// ErrNotFound is a consultation that is not in the database.
var ErrNotFound = errors.New("no such consultation")

// AddConsultation books a consultation for unit from start to end and
// returns it with the patient secret, which is stored only hashed and
// cannot be shown again.
func (s *Store) AddConsultation(ctx context.Context, unit string, start, end time.Time, sourceUID string, now time.Time) (Consultation, string, error) {
	if !end.After(start) {
		return Consultation{}, "", errors.New("the consultation ends before it starts")
	}
	c := Consultation{ID: "c-" + randomID(10), Unit: unit, Room: "konsult-" + randomID(15), Start: start.UTC().Truncate(time.Second), End: end.UTC().Truncate(time.Second), SourceUID: sourceUID, Created: now.UTC().Truncate(time.Second)}
	sec := make([]byte, 32)
	_, _ = rand.Read(sec)
	c.e2eeKey = make([]byte, E2EEKeySize)
	_, _ = rand.Read(c.e2eeKey)
	secret := base64.RawURLEncoding.EncodeToString(sec)
	var uid any
	if sourceUID != "" {
		uid = sourceUID
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO consultations (id, unit, room, starts_at, ends_at, patient_secret_hash, source_uid, created_at, e2ee_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.ID, c.Unit, c.Room, c.Start.Unix(), c.End.Unix(), hashSecret(secret), uid, c.Created.Unix(), c.e2eeKey)
	if err != nil {
		return Consultation{}, "", fmt.Errorf("add consultation: %w", err)
	}
	return c, secret, nil
}

// CheckPatientSecret reports whether secret is consultation id's.
func (s *Store) CheckPatientSecret(ctx context.Context, id, secret string) (Consultation, bool, error) {
	c, h, err := s.get(ctx, "id = ?", id)
	if err != nil {
		return c, false, err
	}
	return c, subtle.ConstantTimeCompare(h, hashSecret(secret)) == 1, nil
}

const consultCols = `id, unit, room, starts_at, ends_at, COALESCE(source_uid, ''), created_at, cancelled_at, patient_secret_hash`

func scanConsultation(sc interface{ Scan(...any) error }) (Consultation, []byte, error) {
	var c Consultation
	var start, end, created int64
	var cancelled sql.NullInt64
	var h []byte
	if err := sc.Scan(&c.ID, &c.Unit, &c.Room, &start, &end, &c.SourceUID, &created, &cancelled, &h); err != nil {
		return c, nil, err
	}
	c.Start, c.End, c.Created = time.Unix(start, 0).UTC(), time.Unix(end, 0).UTC(), time.Unix(created, 0).UTC()
	if cancelled.Valid {
		t := time.Unix(cancelled.Int64, 0).UTC()
		c.CancelledAt = &t
	}
	return c, h, nil
}

func (s *Store) get(ctx context.Context, where string, arg any) (Consultation, []byte, error) {
	c, h, err := scanConsultation(s.db.QueryRowContext(ctx, "SELECT "+consultCols+" FROM consultations WHERE "+where, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return c, nil, ErrNotFound
	}
	if err != nil {
		return c, nil, fmt.Errorf("read consultation: %w", err)
	}
	return c, h, nil
}

// Consultation returns one by id.
func (s *Store) Consultation(ctx context.Context, id string) (Consultation, error) {
	c, _, err := s.get(ctx, "id = ?", id)
	return c, err
}

// BySourceUID returns the consultation imported from an iCalendar UID.
func (s *Store) BySourceUID(ctx context.Context, uid string) (Consultation, error) {
	c, _, err := s.get(ctx, "source_uid = ?", uid)
	return c, err
}

// List returns consultations ending after since (all if since is zero),
// cancelled ones too if cancelled is set, by start.
func (s *Store) List(ctx context.Context, unit string, since time.Time, cancelled bool) ([]Consultation, error) {
	q := "SELECT " + consultCols + " FROM consultations WHERE ends_at > ?"
	args := []any{since.Unix()}
	if since.IsZero() {
		args[0] = int64(-1 << 62)
	}
	if unit != "" {
		q += " AND unit = ?"
		args = append(args, unit)
	}
	if !cancelled {
		q += " AND cancelled_at IS NULL"
	}
	rows, err := s.db.QueryContext(ctx, q+" ORDER BY starts_at, id", args...)
	if err != nil {
		return nil, fmt.Errorf("list consultations: %w", err)
	}
	defer rows.Close()
	var out []Consultation
	for rows.Next() {
		c, _, err := scanConsultation(rows)
		if err != nil {
			return nil, fmt.Errorf("list consultations: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// Units returns every unit that has a consultation ending after since
// (cancelled ones too: their schedule must be published without them).
func (s *Store) Units(ctx context.Context, since time.Time) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT DISTINCT unit FROM consultations WHERE ends_at > ? ORDER BY unit", since.Unix())
	if err != nil {
		return nil, fmt.Errorf("list units: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// Cancel cancels a consultation.
func (s *Store) Cancel(ctx context.Context, id string, now time.Time) (Consultation, error) {
	res, err := s.db.ExecContext(ctx, "UPDATE consultations SET cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL", now.Unix(), id)
	if err != nil {
		return Consultation{}, fmt.Errorf("cancel consultation: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := s.Consultation(ctx, id); err != nil {
			return Consultation{}, err
		}
	}
	return s.Consultation(ctx, id)
}

// Reschedule moves a consultation (an iCalendar re-import).
func (s *Store) Reschedule(ctx context.Context, id string, start, end time.Time) error {
	if !end.After(start) {
		return errors.New("the consultation ends before it starts")
	}
	_, err := s.db.ExecContext(ctx, "UPDATE consultations SET starts_at = ?, ends_at = ? WHERE id = ?", start.Unix(), end.Unix(), id)
	if err != nil {
		return fmt.Errorf("reschedule consultation: %w", err)
	}
	return nil
}

// E2EEKey returns consultation id's key material K, or nil once its window
// has ended and PurgeKeys deleted it.
func (s *Store) E2EEKey(ctx context.Context, id string) ([]byte, error) {
	var k []byte
	err := s.db.QueryRowContext(ctx, "SELECT e2ee_key FROM consultations WHERE id = ?", id).Scan(&k)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read consultation key: %w", err)
	}
	return k, nil
}

// PurgeKeys deletes the key material of every consultation that ended
// before cutoff or was cancelled, and returns how many it deleted.
func (s *Store) PurgeKeys(ctx context.Context, cutoff time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, "UPDATE consultations SET e2ee_key = NULL WHERE e2ee_key IS NOT NULL AND (ends_at < ? OR cancelled_at IS NOT NULL)", cutoff.Unix())
	if err != nil {
		return 0, fmt.Errorf("purge consultation keys: %w", err)
	}
	return res.RowsAffected()
}

// PruneRecords deletes the token and patient-join log entries issued
// before cutoff, and consultations that ended before it (their key
// material went at their end).
func (s *Store) PruneRecords(ctx context.Context, cutoff time.Time) (int64, error) {
	var n int64
	for _, q := range []string{
		"DELETE FROM tokens_issued WHERE issued_at < ?",
		"DELETE FROM patient_joins WHERE issued_at < ?",
		"DELETE FROM consultations WHERE ends_at < ?",
	} {
		res, err := s.db.ExecContext(ctx, q, cutoff.Unix()) // these tables keep Unix seconds
		if err != nil {
			return n, fmt.Errorf("prune records: %w", err)
		}
		m, _ := res.RowsAffected()
		n += m
	}
	return n, nil
}

// RecordPatientJoin logs a patient token issued (never the token or the
// secret).
func (s *Store) RecordPatientJoin(ctx context.Context, consultation, identity string, issued, expires time.Time) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO patient_joins (consultation, identity, issued_at, expires_at) VALUES (?, ?, ?, ?)",
		consultation, identity, issued.Unix(), expires.Unix())
	if err != nil {
		return fmt.Errorf("record patient join: %w", err)
	}
	return nil
}

// RecordToken logs a token issued (never the token itself).
func (s *Store) RecordToken(ctx context.Context, unit, consultation, room string, issued, expires time.Time) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO tokens_issued (unit, consultation, room, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)",
		unit, consultation, room, issued.Unix(), expires.Unix())
	if err != nil {
		return fmt.Errorf("record token: %w", err)
	}
	return nil
}

// TokensIssued counts the tokens issued to unit.
func (s *Store) TokensIssued(ctx context.Context, unit string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM tokens_issued WHERE unit = ?", unit).Scan(&n)
	return n, err
}

// Renewal returns the CSR hash last answered for unit.
func (s *Store) Renewal(ctx context.Context, unit string) (string, error) {
	var h string
	err := s.db.QueryRowContext(ctx, "SELECT csr_sha256 FROM renewals WHERE unit = ?", unit).Scan(&h)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return h, err
}

// RecordRenewal remembers that unit's CSR was answered.
func (s *Store) RecordRenewal(ctx context.Context, unit, csrHash string, at time.Time, failure string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO renewals (unit, csr_sha256, answered_at, error) VALUES (?, ?, ?, ?)
		ON CONFLICT(unit) DO UPDATE SET csr_sha256 = excluded.csr_sha256, answered_at = excluded.answered_at, error = excluded.error`,
		unit, csrHash, at.Unix(), failure)
	if err != nil {
		return fmt.Errorf("record renewal: %w", err)
	}
	return nil
}
