package manager

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
)

// Unit is what the fleet manager knows of one unit: its retained status and
// reported documents (either may be missing) and when they last changed.
type Unit struct {
	ID       string
	Status   *fleet.StatusDoc
	Reported *fleet.ReportedDoc
	// Seen is the latest time the unit itself stamped on a document or
	// event: its "last seen".
	Seen time.Time
}

// InGroup reports whether the unit's reported document lists group g.
func (u *Unit) InGroup(g string) bool {
	return u.Reported != nil && slices.Contains(u.Reported.Groups, g)
}

// Online reports whether its retained status says it is connected.
func (u *Unit) Online() bool { return u.Status != nil && u.Status.Online }

// View is the fleet as seen through the retained status and reported
// topics, kept current by feeding it every message.
type View struct {
	units map[string]*Unit
}

// NewView returns an empty view.
func NewView() *View { return &View{units: map[string]*Unit{}} }

// Unit returns unit id, adding it if the view does not know it yet.
func (v *View) Unit(id string) *Unit {
	u := v.units[id]
	if u == nil {
		u = &Unit{ID: id}
		v.units[id] = u
	}
	return u
}

// Sorted returns the units ordered by id.
func (v *View) Sorted() []*Unit {
	out := make([]*Unit, 0, len(v.units))
	for _, u := range v.units {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b *Unit) int {
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

// Feed updates the view from a status or reported message and says whether
// it was one. A document that does not parse is ignored: the fleet view must
// not fail because one unit published something odd, and an empty retained
// message (a deleted topic) removes the document.
func (v *View) Feed(m Msg) bool {
	switch m.Kind {
	case link.DeviceStatus:
		u := v.Unit(m.Unit)
		if len(m.Payload) == 0 {
			u.Status = nil
			return true
		}
		var s fleet.StatusDoc
		if json.Unmarshal(m.Payload, &s) == nil {
			u.Status = &s
			u.Saw(s.At)
		}
		return true
	case link.DeviceReported:
		u := v.Unit(m.Unit)
		if len(m.Payload) == 0 {
			u.Reported = nil
			return true
		}
		var r fleet.ReportedDoc
		if json.Unmarshal(m.Payload, &r) == nil {
			u.Reported = &r
			u.Saw(r.At)
		}
		return true
	}
	return false
}

// Saw moves its last seen time forward to at.
func (u *Unit) Saw(at time.Time) {
	if at.After(u.Seen) {
		u.Seen = at
	}
}

// Event is a unit's event as it arrives on its events topic.
type Event struct {
	Unit string          `json:"unit"`
	ID   string          `json:"id"`
	Type string          `json:"type"`
	At   time.Time       `json:"at"`
	Data json.RawMessage `json:"data,omitempty"`
}

// ParseEvent decodes an events message; ok is false for anything that is
// not an event with an id and a type.
func ParseEvent(m Msg) (Event, bool) {
	if m.Kind != link.DeviceEvents {
		return Event{}, false
	}
	var e link.Event
	var raw struct {
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(m.Payload, &e) != nil || json.Unmarshal(m.Payload, &raw) != nil || e.ID == "" || e.Type == "" {
		return Event{}, false
	}
	return Event{Unit: m.Unit, ID: e.ID, Type: e.Type, At: e.At, Data: raw.Data}, true
}

// Dedup remembers the ids of recent events: QoS 1 delivers at least once,
// and a copy carries the same id. It keeps the last n ids, which covers any
// redelivery (a broker resends unacknowledged messages right after a
// reconnect, not hours later).
type Dedup struct {
	seen  map[string]struct{}
	order []string
	n     int
}

// NewDedup remembers the last n ids.
func NewDedup(n int) *Dedup { return &Dedup{seen: map[string]struct{}{}, n: n} }

// First reports whether id is new, and remembers it.
func (d *Dedup) First(id string) bool {
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
