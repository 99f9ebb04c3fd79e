package config

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/konsult/konsult/hal/board"
	"github.com/konsult/konsult/provisioning/link"
)

// Validate checks every key's range and the keys that go together. All
// problems are reported at once, each naming its key and the fix.
func (c *Config) Validate() error {
	pos := func(name string, d Duration, min, max time.Duration) error {
		if d.Duration < min || d.Duration > max {
			return fmt.Errorf("%s = %q is out of range: use a value from %s to %s", name, d.String(), min, max)
		}
		return nil
	}
	return errors.Join(
		pos("buttons.debounce", c.Buttons.Debounce, time.Millisecond, 500*time.Millisecond),
		pos("buttons.long_press", c.Buttons.LongPress, 200*time.Millisecond, time.Minute),
		resetHoldRange(c.Buttons.FactoryResetHold),
		oneOf("unit.network_apply", c.Unit.NetworkApply, "", "helper", "none"),
		c.Network.Validate(),
		pos("shutter.timeout", c.Shutter.Timeout, 50*time.Millisecond, 30*time.Second),
		pos("audit.retention", c.Audit.Retention, time.Hour, 10*365*24*time.Hour),
		auditSize(c.Audit.MaxBytes),
		pos("call.join_timeout", c.Call.JoinTimeout, time.Second, 5*time.Minute),
		pos("call.leave_timeout", c.Call.LeaveTimeout, 100*time.Millisecond, time.Minute),
		pos("call.max_length", c.Call.MaxLength, 0, 24*time.Hour),
		pos("sim.travel", c.Sim.Travel, 0, 10*time.Second),
		pos("sim.join_delay", c.Sim.JoinDelay, 0, time.Minute),
		pos("sim.echo.delay", c.Sim.Echo.Delay, 0, 500*time.Millisecond),
		pos("sim.echo.reverb", c.Sim.Echo.Reverb, 0, 500*time.Millisecond),
		floatRange("sim.echo.attenuation_db", c.Sim.Echo.AttenuationDB, 0, 60),
		oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error"),
		oneOf("conference.connector", c.Conference.Connector, "", "livekit-whip", "livekit", "whip"),
		pos("call.leave_when_alone", c.Call.LeaveWhenAlone, 0, 24*time.Hour),
		oneOf("conference.video_codec", c.Conference.VideoCodec, "auto", "H264", "VP8"),
		oneOf("conference.video_passthrough", c.Conference.VideoPassthrough, "auto", "off"),
		intRange("conference.width", c.Conference.Width, 160, 3840),
		intRange("conference.height", c.Conference.Height, 120, 2160),
		intRange("conference.fps", c.Conference.FPS, 1, 60),
		intRange("conference.video_bitrate_kbps", c.Conference.VideoBitrateKbps, 100, 20000),
		intRange("conference.audio_bitrate_kbps", c.Conference.AudioBitrateKbps, 6, 510),
		oneOf("log.format", c.Log.Format, "text", "json"),
		oneOf("display.language", c.Display.Language, "en", "nl", "es", "nb"),
		loopbackAddr("display.listen", c.Display.Listen),
		pos("fleet.confirm_timeout", c.Fleet.ConfirmTimeout, time.Second, time.Hour),
		c.Fleet.validate(),
		c.Update.validate(),
		c.validateE2EE(),
		c.validatePins(),
	)
}

// validatePins checks the board and pin roles as far as the config alone
// can tell (a role on two pins, a role without a pin), so a fleet config
// with such a mistake is refused rather than applied and rolled back.
// Whether each line exists is up to the board, when the unit opens.
func (c *Config) validatePins() error {
	profile, err := board.Lookup(c.Unit.Board)
	if err != nil {
		// Not err: it quotes the value (see oneOf).
		return fmt.Errorf("unit.board is not a board roomd knows: use one of %s", strings.Join(board.Names(), ", "))
	}
	overrides := make(map[board.Role]string, len(c.Pins))
	for k, v := range c.Pins {
		overrides[board.Role(k)] = v
	}
	if profile, err = profile.With(overrides); err != nil {
		return fmt.Errorf("[pins]: %w", err)
	}
	if miss := profile.Missing(); len(miss) > 0 {
		return fmt.Errorf("[pins]: role %s has no pin: set it under [pins], e.g. %s = \"GPIO17\"", miss[0], miss[0])
	}
	return nil
}

func (f *Fleet) validate() error {
	var errs []error
	if f.DeviceID != "" {
		if err := link.ValidName(f.DeviceID); err != nil {
			errs = append(errs, fmt.Errorf("fleet.device_id: %w", err))
		}
	}
	for _, g := range f.Groups {
		if err := link.ValidName(g); err != nil {
			errs = append(errs, fmt.Errorf("fleet.groups: %w", err))
		}
	}
	if f.EnrolCert != "" || f.EnrolKey != "" {
		if f.EnrolCert == "" || f.EnrolKey == "" {
			errs = append(errs, errors.New("fleet.enrol_cert and fleet.enrol_key go together: set both to the fleet's enrolment credential"))
		}
		if f.Broker == "" || f.CAFile == "" {
			errs = append(errs, errors.New("fleet.enrol_cert is set but fleet.broker or fleet.ca_file is not: enrolment needs the fleet's broker and CA"))
		}
		if f.DeviceID != "" && f.Enrols() {
			errs = append(errs, errors.New("fleet.device_id must be empty on a unit that enrols: its id is derived from its own key"))
		}
	}
	if _, err := f.ScheduleKeyList(); err != nil {
		errs = append(errs, err)
	}
	if f.RenewBefore.Duration < 0 {
		errs = append(errs, errors.New("fleet.renew_before must not be negative"))
	}
	if f.Enrols() {
		return errors.Join(errs...) // device id and fleet key come from enrolment
	}
	if f.Broker != "" && f.DeviceID == "" {
		errs = append(errs, errors.New("fleet.broker is set but fleet.device_id is not: set the unit's device id (the CN of its client certificate)"))
	}
	if f.Broker != "" && f.FleetKey == "" {
		errs = append(errs, errors.New("fleet.broker is set but fleet.fleet_key is not: install the fleet's public key (fleet.pub) and point fleet_key at it"))
	}
	return errors.Join(errs...)
}

func resetHoldRange(d Duration) error {
	if d.Duration != 0 && (d.Duration < 3*time.Second || d.Duration > time.Minute) {
		return fmt.Errorf("buttons.factory_reset_hold = %q: use 0s (off) or 3s to 1m, so a brief press of both buttons can never wipe the unit", d.String())
	}
	return nil
}

func intRange(key string, v, min, max int) error {
	if v < min || v > max {
		return fmt.Errorf("%s = %d is out of range: use a value from %d to %d", key, v, min, max)
	}
	return nil
}

// oneOf refuses a value that is not one of valid, naming the key and the
// choices but not the value: a secret put on the wrong line must not be
// repeated into the journal or a fleet rejection (issue 14).
func oneOf(key, v string, valid ...string) error {
	for _, ok := range valid {
		if v == ok {
			return nil
		}
	}
	choices := make([]string, len(valid))
	for i, ok := range valid {
		choices[i] = strconv.Quote(ok)
	}
	return fmt.Errorf("%s is not a value it takes: use one of %s", key, strings.Join(choices, ", "))
}

func floatRange(name string, v, min, max float64) error {
	if v < min || v > max || v != v {
		return fmt.Errorf("%s = %g is out of range: use a value from %g to %g", name, v, min, max)
	}
	return nil
}

// loopbackAddr refuses a listen address off loopback: the screen's page and
// its media are for the unit's own kiosk only.
func loopbackAddr(key, v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("%s is not host:port: use e.g. \"127.0.0.1:8788\"", key)
	}
	if ip := net.ParseIP(host); (ip == nil && host != "localhost") || (ip != nil && !ip.IsLoopback()) {
		return fmt.Errorf("%s must be a loopback address (127.0.0.1 or ::1): the screen is for the unit's own kiosk", key)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%s: the port is not a number from 0 to 65535", key)
	}
	return nil
}

func auditSize(n int64) error {
	if n < 64<<10 || n > 1<<30 {
		return fmt.Errorf("audit.max_bytes = %d is out of range: use 65536 (64 KiB) to 1073741824 (1 GiB)", n)
	}
	return nil
}
