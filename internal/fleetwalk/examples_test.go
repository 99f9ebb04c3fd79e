package fleetwalk

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// exampleDocs are the pages a new fleet manager copies commands from
// (issue 18).
var exampleDocs = []string{"README.md", "docs/FLEETCTL.md", "docs/INSTALL.md", "deploy/mosquitto/README.md"}

var (
	// a real device id (ku- and 20 base32 characters), or a placeholder
	// such as ID, <id> or EMQX's ${username}.
	exampleDevice = regexp.MustCompile(`^(ku-[a-z2-7]{20}|[A-Z]+|<[a-z]+>|\$\{[a-z]+\})$`)
	// the example fleet's one group, or a placeholder (G, NAME, <g>).
	exampleGroup = regexp.MustCompile(`^(clinic-north|[A-Z]+|<[a-z]+>)$`)

	deviceUses = []*regexp.Regexp{
		regexp.MustCompile("--device[ =]([^\\s`'\",;)]+)"),
		regexp.MustCompile("konsult/device/([^/\\s`+%]+)/"),
		regexp.MustCompile("fleetctl (?:enrol (?:approve|reject)|revoke) ([^\\s`-][^\\s`]*)"),
		regexp.MustCompile("(?m)^user ([^\\s`]+)$"),
	}
	groupUses = []*regexp.Regexp{
		regexp.MustCompile("--group[ =]([^\\s`'\",;)]+)"),
		regexp.MustCompile("konsult/group/([^/\\s`+%]+)/"),
	}
)

// The docs use one example fleet: the group clinic-north and device ids
// of the form units really have. With clinic-a, ward-3 and room-11, a
// copied push succeeded silently against an empty group, and a copied cmd
// went to a unit no fleet has (issue 18 item 6).
func TestDocsUseOneExampleFleet(t *testing.T) {
	for _, file := range exampleDocs {
		text, err := os.ReadFile(filepath.Join(repoRoot(t), file))
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range exampleFleetMistakes(string(text)) {
			t.Errorf("%s: %s", file, bad)
		}
	}
}

// exampleFleetMistakes lists the device ids and group names in text that
// are not the example fleet's.
func exampleFleetMistakes(text string) []string {
	var bad []string
	check := func(uses []*regexp.Regexp, ok *regexp.Regexp, what string) {
		for _, re := range uses {
			for _, m := range re.FindAllStringSubmatch(text, -1) {
				if v := strings.TrimRight(m[1], ".:]…"); !ok.MatchString(v) {
					bad = append(bad, what+" "+v+" in "+strings.TrimSpace(m[0])+": use the example fleet (group clinic-north, a ku-… device id) or a placeholder")
				}
			}
		}
	}
	check(deviceUses, exampleDevice, "device")
	check(groupUses, exampleGroup, "group")
	return bad
}
