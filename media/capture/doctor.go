package capture

import (
	"fmt"
	"strings"
)

// Check is one line of the unit's self-check (roomctl doctor) about the
// capture devices. The caller maps it to its API's type.
type Check struct {
	Name   string
	OK     bool
	Detail string
	Fix    string
}

// DeviceChecks says which camera and microphone a join would open, from
// what the unit can see now (Devices). camera and microphone are the
// selections (Config.Camera, Config.Microphone); simulated means the test
// devices whatever they say.
func DeviceChecks(simulated bool, camera, microphone string) []Check {
	var out []Check
	devs := Devices()
	for _, want := range []struct{ kind, sel string }{{"camera", camera}, {"microphone", microphone}} {
		if simulated {
			want.sel = TestDevice
		}
		var found []string
		for _, d := range devs {
			if d.Kind == want.kind && d.Test == (want.sel == TestDevice) {
				found = append(found, d.Label)
			}
		}
		c := Check{Name: want.kind}
		switch {
		case want.sel == TestDevice:
			c.OK, c.Detail = true, "the simulated "+want.kind+" (test driver)"
		case len(found) == 0:
			c.Detail = "none found"
			c.Fix = map[string]string{
				"camera":     "plug in a USB (UVC) camera or enable the camera module; check /dev/video* and that roomd's user is in group video",
				"microphone": "plug in a microphone; check `arecord -l` and that roomd's user is in group audio",
			}[want.kind]
		default:
			c.OK = true
			sel := want.sel
			if sel == "" {
				sel = "the first found"
			}
			c.Detail = fmt.Sprintf("found %s; conference.%s selects %s", strings.Join(found, ", "), want.kind, sel)
		}
		out = append(out, c)
	}
	return out
}
