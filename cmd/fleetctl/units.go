package main

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// unitView is what fleetctl knows of one unit: its retained status and
// reported documents (either may be missing) and when they last changed.
type unitView struct {
	ID       string
	Status   *fleet.StatusDoc
	Reported *fleet.ReportedDoc
	// Seen is the latest time the unit itself stamped on a document or
	// event: its "last seen".
	Seen time.Time
}

// inGroup reports whether the unit's reported document lists group g.
func (u *unitView) inGroup(g string) bool {
	return u.Reported != nil && slices.Contains(u.Reported.Groups, g)
}

func (u *unitView) online() bool { return u.Status != nil && u.Status.Online }

// fleetView is the fleet as seen through the retained status and reported
// topics, kept current by feeding it every message.
type fleetView struct {
	units map[string]*unitView
}

func newFleetView() *fleetView { return &fleetView{units: map[string]*unitView{}} }

func (v *fleetView) unit(id string) *unitView {
	u := v.units[id]
	if u == nil {
		u = &unitView{ID: id}
		v.units[id] = u
	}
	return u
}

// sorted returns the units ordered by id.
func (v *fleetView) sorted() []*unitView {
	out := make([]*unitView, 0, len(v.units))
	for _, u := range v.units {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b *unitView) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

// feed updates the view from a status or reported message and says whether
// it was one. A document that does not parse is ignored: the fleet view must
// not fail because one unit published something odd, and an empty retained
// message (a deleted topic) removes the document.
func (v *fleetView) feed(m fleetMsg) bool {
	switch m.Kind {
	case link.DeviceStatus:
		u := v.unit(m.Unit)
		if len(m.Payload) == 0 {
			u.Status = nil
			return true
		}
		var s fleet.StatusDoc
		if json.Unmarshal(m.Payload, &s) == nil {
			u.Status = &s
			u.seen(s.At)
		}
		return true
	case link.DeviceReported:
		u := v.unit(m.Unit)
		if len(m.Payload) == 0 {
			u.Reported = nil
			return true
		}
		var r fleet.ReportedDoc
		if json.Unmarshal(m.Payload, &r) == nil {
			u.Reported = &r
			u.seen(r.At)
		}
		return true
	}
	return false
}

func (u *unitView) seen(at time.Time) {
	if at.After(u.Seen) {
		u.Seen = at
	}
}

// event is a unit's event as it arrives on its events topic.
type event struct {
	Unit string          `json:"unit"`
	ID   string          `json:"id"`
	Type string          `json:"type"`
	At   time.Time       `json:"at"`
	Data json.RawMessage `json:"data,omitempty"`
}

// parseEvent decodes an events message; ok is false for anything that is
// not an event with an id and a type.
func parseEvent(m fleetMsg) (event, bool) {
	if m.Kind != link.DeviceEvents {
		return event{}, false
	}
	var e link.Event
	var raw struct {
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(m.Payload, &e) != nil || json.Unmarshal(m.Payload, &raw) != nil || e.ID == "" || e.Type == "" {
		return event{}, false
	}
	return event{Unit: m.Unit, ID: e.ID, Type: e.Type, At: e.At, Data: raw.Data}, true
}

// dedup remembers the ids of recent events: QoS 1 delivers at least once,
// and a copy carries the same id. It keeps the last n ids, which covers any
// redelivery (a broker resends unacknowledged messages right after a
// reconnect, not hours later).
type dedup struct {
	seen  map[string]struct{}
	order []string
	n     int
}

func newDedup(n int) *dedup { return &dedup{seen: map[string]struct{}{}, n: n} }

// first reports whether id is new, and remembers it.
func (d *dedup) first(id string) bool {
	if _, dup := d.seen[id]; dup {
		return false
	}
	d.seen[id] = struct{}{}
	d.order = append(d.order, id)
	if len(d.order) > d.n {
		delete(d.seen, d.order[0])
		d.order = d.order[1:]
	}
	return true
}
