package encoder

import "fmt"

// PassThroughConfig is what the unit's config says about sending a
// camera's own H.264 without re-encoding it. It reaches the backend
// ("uvc-h264", registered by package capture, which owns the camera and the
// privacy gate) in Settings.PassThrough: roomd's config, not a process
// global, so two connectors (or tests) can each ask for their own.
type PassThroughConfig struct {
	// Mode is "auto" (use the camera's own H.264 when it offers it at the
	// configured size) or "off". "" is off: pass-through is used only when
	// the daemon's config asks for it.
	Mode          string
	Camera        string // as conference.camera: "" = the first, "test", or part of a label
	Width, Height int
	FPS           int
}

// Wanted says why pass-through is not even looked for, or nil.
func (c PassThroughConfig) Wanted() error {
	switch c.Mode {
	case "auto":
	case "", "off":
		return fmt.Errorf("conference.video_passthrough is off")
	default:
		return fmt.Errorf("conference.video_passthrough = %q is not auto or off", c.Mode)
	}
	if c.Camera == "test" {
		return fmt.Errorf("the camera is the test driver (raw frames only)")
	}
	return nil
}
