package capture

import (
	"strings"
	"testing"
)

// In --sim doctor names the test devices; on a unit with no camera attached
// (this machine), it says so and what to do.
func TestDeviceChecks(t *testing.T) {
	got := map[string]Check{}
	for _, c := range DeviceChecks(true, "", "") {
		got[c.Name] = c
	}
	for _, kind := range []string{"camera", "microphone"} {
		if c := got[kind]; !c.OK || !strings.Contains(c.Detail, "simulated "+kind) {
			t.Errorf("simulated %s: %+v", kind, c)
		}
	}
	for _, c := range DeviceChecks(false, "", "") {
		if c.Name == "camera" && c.OK != (len(Devices()) > 0 && hasRealCamera()) {
			t.Errorf("camera check %+v disagrees with the devices found", c)
		}
		if c.Name == "camera" && !c.OK && !strings.Contains(c.Fix, "/dev/video") {
			t.Errorf("no camera, but the fix does not say where to look: %+v", c)
		}
	}
}

func hasRealCamera() bool {
	for _, d := range Devices() {
		if d.Kind == "camera" && !d.Test {
			return true
		}
	}
	return false
}
