package capture

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/driver"

	// The unit's real camera: V4L2 (pure Go ioctls). The microphone (ALSA)
	// needs cgo and is in devices_alsa.go.
	_ "github.com/pion/mediadevices/pkg/driver/camera"
)

// TestDevice selects the simulated unit's camera or microphone: the
// mediadevices test drivers (moving colour bars with a noise band, a tone).
const TestDevice = "test"

// ErrNoDevice: no camera or microphone matches the configuration.
var ErrNoDevice = errors.New("no such device")

// Device is one camera or microphone the unit can see.
type Device struct {
	Kind  string // "camera" or "microphone"
	Label string // V4L2: "<card>;<path>"; ALSA: the device id
	Test  bool   // a test driver, not hardware
	id    string
}

// Devices lists every camera and microphone found, for doctor.
func Devices() []Device {
	var out []Device
	for _, d := range mediadevices.EnumerateDevices() {
		var kind string
		switch d.DeviceType {
		case driver.Camera:
			kind = "camera"
		case driver.Microphone:
			kind = "microphone"
		default:
			continue
		}
		out = append(out, Device{Kind: kind, Label: d.Label, Test: isTestLabel(d.Label), id: d.DeviceID})
	}
	return out
}

func isTestLabel(l string) bool { return l == "VideoTest" || l == "AudioTest" }

// pick chooses the device of kind that want names: TestDevice, "" (the
// first real one, so a unit with one USB camera needs no setting), or a
// string its label contains (a V4L2 path such as /dev/video0, a card name,
// an ALSA device id).
func pick(kind, want string) (Device, error) {
	var real []Device
	for _, d := range Devices() {
		if d.Kind != kind {
			continue
		}
		switch {
		case want == TestDevice && d.Test:
			return d, nil
		case want == TestDevice || d.Test:
		case want == "" || strings.Contains(d.Label, want):
			return d, nil
		default:
			real = append(real, d)
		}
	}
	hint := map[string]string{
		"camera":     "plug in a USB (UVC) camera or enable the camera module, check that /dev/video* exists and roomd's user is in group video",
		"microphone": "plug in a microphone, check `arecord -l` lists it and roomd's user is in group audio",
	}[kind]
	if want == "" {
		return Device{}, fmt.Errorf("%w: no %s found: %s", ErrNoDevice, kind, hint)
	}
	if want == TestDevice {
		return Device{}, fmt.Errorf("%w: the test %s driver is not built in", ErrNoDevice, kind)
	}
	labels := make([]string, len(real))
	for i, d := range real {
		labels[i] = d.Label
	}
	return Device{}, fmt.Errorf("%w: no %s matches %q (found: %s): set conference.%s to one of those, or \"\" for the first", ErrNoDevice, kind, want, strings.Join(labels, ", "), kind)
}
