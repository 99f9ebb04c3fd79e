package fleet

import (
	"bytes"
	"fmt"

	"github.com/BurntSushi/toml"
)

// Merge overlays TOML configs, lowest layer first, and returns the result as
// TOML text. The unit's effective config is its group configs in the unit's
// configured group order, then its device config (see Effective). The rules:
//
//   - A key set in a later layer wins over the same key in an earlier one.
//   - Where both layers hold a table (a [section] or an inline table) under
//     the same key, the tables merge key by key, recursively, by these rules.
//   - Arrays, including arrays of tables ([[x]]), replace whole: they are
//     never appended to or merged element by element.
//   - Scalars (strings, numbers, booleans, dates) replace whole, and so does
//     any value whose type differs between the layers (a table over a scalar
//     or a scalar over a table).
//   - A layer cannot remove a key. To undo a group's setting for one device,
//     set the key explicitly in the device config (e.g. to its default).
//
// A layer that is not valid TOML fails the merge; nothing is returned.
func Merge(layers ...[]byte) ([]byte, error) {
	names := make([]string, len(layers))
	for i := range layers {
		names[i] = fmt.Sprintf("layer %d", i+1)
	}
	return mergeNamed(names, layers)
}

func mergeNamed(names []string, layers [][]byte) ([]byte, error) {
	out := map[string]any{}
	for i, l := range layers {
		m, err := ParseTOML(l)
		if err != nil {
			return nil, fmt.Errorf("merge config of %s: %w", names[i], err)
		}
		mergeTables(out, m)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(out); err != nil {
		// The input was TOML, so this is a bug; the message names no value.
		return nil, fmt.Errorf("merge config: encode result: %w", err)
	}
	return buf.Bytes(), nil
}

// mergeTables overlays src onto dst in place. Both come fresh from a decoder
// in Merge, so sharing sub-tables between them is harmless.
func mergeTables(dst, src map[string]any) {
	for k, sv := range src {
		st, sIsTable := sv.(map[string]any)
		dt, dIsTable := dst[k].(map[string]any)
		if sIsTable && dIsTable {
			mergeTables(dt, st)
			continue
		}
		dst[k] = sv
	}
}

// Effective merges the configs stored for a unit into its effective config.
// byTarget maps Target.Key() to TOML text; the unit's groups apply in id's
// order, then its device config. Entries for other targets are ignored.
func Effective(id Identity, byTarget map[string][]byte) ([]byte, error) {
	var names []string
	var layers [][]byte
	targets := make([]Target, 0, len(id.Groups)+1)
	for _, g := range id.Groups {
		targets = append(targets, Target{Group: g})
	}
	targets = append(targets, Target{Device: id.Device})
	for _, t := range targets {
		if c, ok := byTarget[t.Key()]; ok {
			names = append(names, t.String())
			layers = append(layers, c)
		}
	}
	return mergeNamed(names, layers)
}
