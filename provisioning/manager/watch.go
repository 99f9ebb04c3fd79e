package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/konsult/konsult/provisioning/link"
)

// WatchOptions choose the events Watch hands on: one unit's (Device), or
// those of the units that report being in Group, or every unit's; only of
// Types (empty: all); stop after Count (0: until ctx ends).
type WatchOptions struct {
	Device, Group string
	Types         map[string]bool
	Count         int
	// Ready, if set, is called once the subscriptions are in place and the
	// retained state is read: events from then on are handed on.
	Ready func()
}

// Watch hands every event the options choose to each, as it happens, once
// (QoS 1 duplicates, the same event id, are dropped), until ctx ends or
// Count events were handed on. Group membership follows the units'
// reported documents while watching.
func Watch(ctx context.Context, b Broker, log *slog.Logger, o WatchOptions, each func(Event)) error {
	if err := o.Check(); err != nil {
		return err
	}
	t := link.Topics{Prefix: b.Prefix}
	filters := []string{t.AllDevices(link.DeviceEvents)}
	if o.Device != "" {
		filters = []string{t.Events(o.Device)}
	} else if o.Group != "" {
		filters = append(filters, t.AllDevices(link.DeviceReported))
	}
	fc, err := Dial(ctx, b, log, filters...)
	if err != nil {
		return err
	}
	defer fc.Close()
	view := NewView()
	if err := fc.Sync(ctx, func(m Msg) { view.Feed(m) }); err != nil {
		return err
	}
	if o.Ready != nil {
		o.Ready()
	}
	dd := NewDedup(1 << 16)
	n := 0
	for o.Count == 0 || n < o.Count {
		m, err := fc.Next(ctx)
		if err != nil {
			return nil // interrupted, or the caller's time is over
		}
		if view.Feed(m) {
			continue
		}
		ev, ok := ParseEvent(m)
		if !ok || !dd.First(ev.Unit+"/"+ev.ID) {
			continue
		}
		if o.Group != "" && !view.Unit(ev.Unit).InGroup(o.Group) {
			continue
		}
		if len(o.Types) > 0 && !o.Types[ev.Type] {
			continue
		}
		n++
		each(ev)
	}
	return nil
}

// Check refuses options Watch cannot follow.
func (o WatchOptions) Check() error {
	if o.Device != "" && o.Group != "" {
		return errors.New("give --device or --group, not both")
	}
	for _, n := range []struct{ flag, v string }{{"--device", o.Device}, {"--group", o.Group}} {
		if n.v != "" {
			if err := link.ValidName(n.v); err != nil {
				return fmt.Errorf("%s: %w", n.flag, err)
			}
		}
	}
	if o.Count < 0 {
		return errors.New("--count must be 0 or more")
	}
	return nil
}
