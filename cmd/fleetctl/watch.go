package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/provisioning/manager"
)

func watch(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlags("watch")
	device := fs.String("device", "", "only this unit's events")
	group := fs.String("group", "", "only the events of units that report being in this group")
	types := fs.String("type", "", "only events of these types, comma-separated (e.g. config_rejected,shutter_fault)")
	asJSON := fs.Bool("json", false, "print each event as one line of JSON: {unit, id, type, at, data}")
	count := fs.Int("count", 0, "stop after this many events (0: until interrupted)")
	dur := fs.Duration("for", 0, "stop after this long (0: until interrupted)")
	bs := addBrokerFlags(fs)
	pos, err := parseFlags(fs, env, args)
	if err != nil {
		return helpIsNil(err)
	}
	if len(pos) > 0 {
		return fmt.Errorf("watch: unexpected argument %q: watch takes only flags", pos[0])
	}
	if *count < 0 || *dur < 0 {
		return errors.New("watch: --count and --for must be 0 or more")
	}
	o := manager.WatchOptions{Device: *device, Group: *group, Count: *count, Types: map[string]bool{}}
	if err := o.Check(); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	for _, t := range strings.Split(*types, ",") {
		if t = strings.TrimSpace(t); t != "" {
			o.Types[t] = true
		}
	}
	if err := bs.resolve("watch"); err != nil {
		return err
	}
	what := "every unit"
	switch {
	case *device != "":
		what = "unit " + *device
	case *group != "":
		what = "the units of group " + *group
	}
	o.Ready = func() { fmt.Fprintf(env.stderr, "watching events of %s (Ctrl-C to stop)\n", what) }
	if *dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	err = manager.Watch(ctx, bs.broker(), env.log, o, func(ev manager.Event) {
		if *asJSON {
			if b, err := json.Marshal(ev); err == nil {
				fmt.Fprintf(env.stdout, "%s\n", safeJSON(b))
			}
			return
		}
		printEvent(env.stdout, ev)
	})
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	return nil
}

// printEvent writes one event as a line: time, unit, type, then the data's
// fields as key=value in name order.
func printEvent(w io.Writer, ev manager.Event) {
	fmt.Fprintf(w, "%s  %-12s  %-18s  %s\n", clock(ev.At), clean(ev.Unit), clean(ev.Type), clean(dataFields(ev.Data)))
}

func dataFields(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return oneLine(string(raw))
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+fieldValue(m[k]))
	}
	return strings.Join(parts, " ")
}

func fieldValue(v any) string {
	switch v := v.(type) {
	case string:
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return strings.ReplaceAll(clock(t), " ", "T")
		}
		if v == "" || strings.ContainsAny(v, " \t\n\"=") {
			return strconv.Quote(v)
		}
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case nil:
		return "null"
	}
	b, _ := json.Marshal(v)
	return string(b)
}
