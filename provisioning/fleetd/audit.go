package fleetd

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// The audit store: fleetd keeps every audit record a unit sends
// (provisioning/audit), as it arrived, and the unit's last reported
// high-water mark, for fleetctl audit verify. It verifies nothing on the
// way in: a record that does not verify is kept too, so verify can name
// it. Records are kept for [retention] audit (PruneAudit), and only as far
// back as what remains still verifies.
//
// It listens on a connection of its own with a persistent session
// (client id konsult/fleetd/audit-store): the broker queues the records a
// unit sends while fleetd is down or reconnecting (up to
// max_queued_messages), so none is lost across an outage of either.

// auditSession is the audit connection's fixed session.
const auditSession = "audit-store"

// runAudit keeps the audit store until ctx ends.
func (s *Service) runAudit(ctx context.Context) error {
	b := s.cfg.manager()
	b.Session = auditSession
	fc, err := manager.Dial(ctx, b, s.log, s.topics.AllDevices(link.DeviceAudit), s.topics.AllDevices(link.DeviceReported))
	if err != nil {
		return fmt.Errorf("fleetd audit store: %w", err)
	}
	defer fc.Close()
	s.auditReady.Do(func() { close(s.auditUp) })
	for {
		m, err := fc.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fleetd audit store: %w", err)
		}
		switch m.Kind {
		case link.DeviceAudit:
			if err := s.store.AddAudit(ctx, m.Unit, m.Payload, m.At); err != nil {
				s.log.Warn("fleetd: audit record not kept", "unit", m.Unit, "err", err)
			}
		case link.DeviceReported:
			var d fleet.ReportedDoc
			if json.Unmarshal(m.Payload, &d) == nil && d.Audit != nil {
				if err := s.store.SetAuditMark(ctx, m.Unit, *d.Audit, d.At); err != nil {
					s.log.Warn("fleetd: audit mark not kept", "unit", m.Unit, "err", err)
				}
			}
		}
	}
}

// AuditReady is closed once the audit store's connection is up.
func (s *Service) AuditReady() <-chan struct{} { return s.auditUp }

// maxAuditLine bounds a stored record (a record is a few hundred bytes).
const maxAuditLine = 8 << 10

// AddAudit keeps one record line from unit (a copy of one already held is
// dropped).
func (s *Store) AddAudit(ctx context.Context, unit string, line []byte, at time.Time) error {
	if len(line) > maxAuditLine {
		return fmt.Errorf("audit record of %d bytes, at most %d", len(line), maxAuditLine)
	}
	r, err := audit.Parse(line)
	if err != nil {
		return err
	}
	if at.IsZero() {
		at = time.Now()
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO audit_records (unit, chain, seq, hash, line, received_at) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT DO NOTHING`, unit, r.Chain, int64(r.Seq), r.Hash(), string(line), at.UnixMilli())
	if err != nil {
		return fmt.Errorf("keep audit record: %w", err)
	}
	return nil
}

// SetAuditMark keeps unit's reported audit high-water mark.
func (s *Store) SetAuditMark(ctx context.Context, unit string, m fleet.AuditReport, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO audit_marks (unit, chain, sent, head, head_hash, at) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT(unit) DO UPDATE SET chain = excluded.chain, sent = excluded.sent, head = excluded.head, head_hash = excluded.head_hash, at = excluded.at`,
		unit, m.Chain, int64(m.Sent), int64(m.Head), m.HeadHash, at.UnixMilli())
	if err != nil {
		return fmt.Errorf("keep audit mark: %w", err)
	}
	return nil
}

// AuditMark is unit's last reported audit high-water mark (ok false if
// none).
func (s *Store) AuditMark(ctx context.Context, unit string) (m fleet.AuditReport, at time.Time, ok bool, err error) {
	var sent, head, ms int64
	err = s.db.QueryRowContext(ctx, "SELECT chain, sent, head, head_hash, at FROM audit_marks WHERE unit = ?", unit).Scan(&m.Chain, &sent, &head, &m.HeadHash, &ms)
	if errors.Is(err, sql.ErrNoRows) {
		return m, at, false, nil
	}
	if err != nil {
		return m, at, false, fmt.Errorf("read audit mark: %w", err)
	}
	m.Sent, m.Head = uint64(sent), uint64(head)
	return m, time.UnixMilli(ms).UTC(), true, nil
}

// AuditChains are unit's chains, oldest first.
func (s *Store) AuditChains(ctx context.Context, unit string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT chain FROM audit_records WHERE unit = ? GROUP BY chain ORDER BY MIN(id)", unit)
	if err != nil {
		return nil, fmt.Errorf("audit chains: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// AuditLines are the record lines of unit's chain, by seq (records that
// arrived twice with different content both, in arrival order).
func (s *Store) AuditLines(ctx context.Context, unit, chain string) ([][]byte, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT line FROM audit_records WHERE unit = ? AND chain = ? ORDER BY seq, id", unit, chain)
	if err != nil {
		return nil, fmt.Errorf("audit records: %w", err)
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			return nil, err
		}
		out = append(out, []byte(l))
	}
	return out, rows.Err()
}

// AuditUnits are the units with audit records.
func (s *Store) AuditUnits(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT DISTINCT unit FROM audit_records ORDER BY unit")
	if err != nil {
		return nil, fmt.Errorf("audit units: %w", err)
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

// DatabasePath is the SQLite file fleetd keeps (fleetctl audit reads it).
func (s *Service) DatabasePath() string { return s.cfg.Database }

// PruneAudit deletes audit records that arrived before cutoff, keeping
// every chain verifiable: in a unit's current chain only records up to
// the newest of its own checkpoints whose pruned records all arrived
// before cutoff (that checkpoint, still kept, accounts for them, as the
// unit's own pruning does); a chain the unit has left (a newer one has
// arrived since) goes whole once its newest record arrived before cutoff.
// It returns how many records went.
func (s *Store) PruneAudit(ctx context.Context, cutoff time.Time) (int64, error) {
	units, err := s.AuditUnits(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, unit := range units {
		chains, err := s.AuditChains(ctx, unit)
		if err != nil {
			return n, err
		}
		for i, chain := range chains {
			var m int64
			if i < len(chains)-1 {
				m, err = s.pruneLeftChain(ctx, unit, chain, cutoff)
			} else {
				m, err = s.pruneChainFront(ctx, unit, chain, cutoff)
			}
			n += m
			if err != nil {
				return n, fmt.Errorf("prune audit records of %s: %w", unit, err)
			}
		}
	}
	return n, nil
}

func (s *Store) pruneLeftChain(ctx context.Context, unit, chain string, cutoff time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM audit_records WHERE unit = ? AND chain = ?
		AND (SELECT MAX(received_at) FROM audit_records WHERE unit = ? AND chain = ?) < ?`, unit, chain, unit, chain, cutoff.UnixMilli())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (s *Store) pruneChainFront(ctx context.Context, unit, chain string, cutoff time.Time) (int64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT line FROM audit_records WHERE unit = ? AND chain = ? AND line LIKE ? ORDER BY seq DESC`,
		unit, chain, `%"`+audit.KindCheckpoint+`"%`)
	if err != nil {
		return 0, err
	}
	var through []uint64 // the checkpoints' pruned_through, newest first
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			rows.Close()
			return 0, err
		}
		r, err := audit.Parse([]byte(l))
		if err != nil || r.Kind != audit.KindCheckpoint {
			continue
		}
		if p, err := strconv.ParseUint(r.Fields["pruned_through"], 10, 64); err == nil && p < r.Seq {
			through = append(through, p)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, p := range through {
		var newest sql.NullInt64
		if err := s.db.QueryRowContext(ctx, `SELECT MAX(received_at) FROM audit_records WHERE unit = ? AND chain = ? AND seq <= ?`,
			unit, chain, int64(p)).Scan(&newest); err != nil {
			return 0, err
		}
		if !newest.Valid {
			return 0, nil // already gone as far as this checkpoint reaches
		}
		if newest.Int64 < cutoff.UnixMilli() {
			res, err := s.db.ExecContext(ctx, `DELETE FROM audit_records WHERE unit = ? AND chain = ? AND seq <= ?`, unit, chain, int64(p))
			if err != nil {
				return 0, err
			}
			return res.RowsAffected()
		}
	}
	return 0, nil
}
