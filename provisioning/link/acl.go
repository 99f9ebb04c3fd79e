package link

import (
	"fmt"
	"slices"
	"strings"

	"github.com/konsult/konsult/deploy/mosquitto"
)

// shippedAdmin is the fleet manager's CN in the shipped acl file.
const shippedAdmin = "fleet-admin"

// ACL renders the Mosquitto acl file for a fleet with the default topic prefix:
// the shipped text (deploy/mosquitto/acl) with admin as the fleet manager's
// certificate CN, followed by one block per unit that belongs to a group,
// granting it read access to those groups' config and cmd topics. units maps
// device id → group names; units without groups need no lines, the shipped
// %u patterns cover them. The output is deterministic (sorted), so a fleet
// tool can compare it with the file on the broker before reloading.
//
// Every name is checked with ValidName: a group called "x\ntopic readwrite #"
// must not become an ACL line.
func ACL(units map[string][]string, admin string) (string, error) {
	if admin == "" {
		admin = shippedAdmin
	}
	if err := ValidName(admin); err != nil {
		return "", fmt.Errorf("acl: fleet manager: %w", err)
	}
	adminLine := "user " + shippedAdmin
	var b strings.Builder
	replaced := false
	for line := range strings.Lines(mosquitto.ACL) {
		if strings.TrimSpace(line) == adminLine {
			line = "user " + admin + "\n"
			replaced = true
		}
		b.WriteString(line)
	}
	if !replaced {
		return "", fmt.Errorf("acl: shipped acl has no %q line", adminLine)
	}

	ids := make([]string, 0, len(units))
	for id := range units {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	t := Topics{}
	for _, id := range ids {
		if err := ValidName(id); err != nil {
			return "", fmt.Errorf("acl: device id: %w", err)
		}
		if id == admin {
			return "", fmt.Errorf("acl: device id %q is the fleet manager's name", id)
		}
		groups := slices.Clone(units[id])
		slices.Sort(groups)
		groups = slices.Compact(groups)
		if len(groups) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\nuser %s\n", id)
		for _, g := range groups {
			if err := ValidName(g); err != nil {
				return "", fmt.Errorf("acl: group of %s: %w", id, err)
			}
			fmt.Fprintf(&b, "topic read %s\ntopic read %s\n", t.GroupConfig(g), t.GroupCmd(g))
		}
	}
	return b.String(), nil
}
