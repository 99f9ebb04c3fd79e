// Package board maps the room unit's roles (buttons, LED, shutter) to GPIO
// line names for a known board, and resolves them to periph pins.
package board

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"periph.io/x/conn/v3/gpio"

	"github.com/konsult/konsult/hal/led"
)

// Role is what a pin does in the room unit.
type Role string

const (
	Join          Role = "join"
	Leave         Role = "leave"
	Privacy       Role = "privacy"
	Mute          Role = "mute"
	LED           Role = "led"
	LEDRed        Role = "led_red"
	LEDGreen      Role = "led_green"
	LEDBlue       Role = "led_blue"
	Shutter       Role = "shutter"
	ShutterOpen   Role = "shutter_open"
	ShutterClosed Role = "shutter_closed"
)

// Roles lists every role in a stable order.
func Roles() []Role {
	return []Role{Join, Leave, Privacy, Mute, LED, LEDRed, LEDGreen, LEDBlue, Shutter, ShutterOpen, ShutterClosed}
}

// ButtonRoles are the roles that are push buttons.
func ButtonRoles() []Role { return []Role{Join, Leave, Privacy, Mute} }

// Profile is a board's default wiring.
type Profile struct {
	Name        string // "pi4", "pi5", "generic"
	Description string
	Driver      string          // which periph driver serves the lines
	Pins        map[Role]string // role -> line name
	Header      map[string]int  // line name -> 40-pin header pin number (pi4/pi5 only)
}

// Pi wiring, BCM line names. An RGB LED, if fitted instead of the single
// LED, is suggested on GPIO12/13/19 (header 32/33/35): set led_red,
// led_green, led_blue and clear led under [pins].
func piPins() map[Role]string {
	return map[Role]string{
		Join:          "GPIO17",
		Leave:         "GPIO27",
		Privacy:       "GPIO22",
		Mute:          "GPIO23",
		LED:           "GPIO18",
		Shutter:       "GPIO24",
		ShutterOpen:   "GPIO5",
		ShutterClosed: "GPIO6",
	}
}

// piHeader maps the lines used above (and the suggested RGB lines) to
// physical header pins, for wiring messages.
func piHeader() map[string]int {
	return map[string]int{
		"GPIO17": 11, "GPIO27": 13, "GPIO22": 15, "GPIO23": 16, "GPIO18": 12,
		"GPIO24": 18, "GPIO5": 29, "GPIO6": 31,
		"GPIO12": 32, "GPIO13": 33, "GPIO19": 35,
	}
}

func profiles() []Profile {
	return []Profile{
		{
			Name:        "pi4",
			Description: "Raspberry Pi 4 (40-pin header, BCM line names)",
			Driver:      "bcm283x or gpioioctl",
			Pins:        piPins(),
			Header:      piHeader(),
		},
		{
			Name:        "pi5",
			Description: "Raspberry Pi 5 (40-pin header via RP1, BCM line names)",
			Driver:      "gpioioctl",
			Pins:        piPins(),
			Header:      piHeader(),
		},
		{
			Name:        "generic",
			Description: "any Linux gpiochip: every line must be named under [pins]",
			Driver:      "gpioioctl",
			Pins:        map[Role]string{},
		},
	}
}

// Names lists the known profile names.
func Names() []string {
	var n []string
	for _, p := range profiles() {
		n = append(n, p.Name)
	}
	return n
}

// Lookup returns a fresh copy of a named profile, safe to modify.
func Lookup(name string) (Profile, error) {
	for _, p := range profiles() {
		if p.Name == name {
			return p, nil
		}
	}
	return Profile{}, fmt.Errorf("unknown board %q (valid: %s)", name, strings.Join(Names(), ", "))
}

func roleList() string {
	var s []string
	for _, r := range Roles() {
		s = append(s, string(r))
	}
	return strings.Join(s, ", ")
}

// With returns a copy of p with some roles re-wired. An empty line name
// removes the role. It rejects unknown roles and a line used by two roles.
func (p Profile) With(overrides map[Role]string) (Profile, error) {
	out := p
	out.Pins = maps.Clone(p.Pins)
	if out.Pins == nil {
		out.Pins = map[Role]string{}
	}
	out.Header = maps.Clone(p.Header)
	// Sorted so the error for several bad roles is deterministic.
	for _, r := range slices.Sorted(maps.Keys(overrides)) {
		if !slices.Contains(Roles(), r) {
			return Profile{}, fmt.Errorf("board %s: unknown role %q in [pins] (valid: %s)", p.Name, r, roleList())
		}
		if line := overrides[r]; line == "" {
			delete(out.Pins, r)
		} else {
			out.Pins[r] = line
		}
	}
	if err := out.checkDuplicates(); err != nil {
		return Profile{}, err
	}
	return out, nil
}

func (p Profile) checkDuplicates() error {
	seen := map[string]Role{}
	for _, r := range Roles() {
		line, ok := p.Pins[r]
		if !ok || line == "" {
			continue
		}
		if other, dup := seen[line]; dup {
			return fmt.Errorf("board %s: line %s is used by both %s and %s: give each role its own pin under [pins]", p.Name, line, other, r)
		}
		seen[line] = r
	}
	return nil
}

func (p Profile) rgb() bool {
	return p.Pins[LEDRed] != "" && p.Pins[LEDGreen] != "" && p.Pins[LEDBlue] != ""
}

// Missing lists required roles that have no pin. Join, the LED and the
// shutter actuator are required; an RGB LED (all three colours) stands in
// for the single LED.
func (p Profile) Missing() []Role {
	var m []Role
	for _, r := range []Role{Join, LED, Shutter} {
		if p.Pins[r] != "" {
			continue
		}
		if r == LED && p.rgb() {
			continue
		}
		m = append(m, r)
	}
	return m
}

// Pins are the resolved pins for a profile. Optional parts that are not
// configured are nil (or absent from Buttons).
type Pins struct {
	Buttons                  map[Role]gpio.PinIO
	LED                      led.Pins
	Actuator                 gpio.PinIO
	OpenSensor, ClosedSensor gpio.PinIO // nil if not configured
}

// Open resolves every configured role with byName (e.g. gpioreg.ByName)
// and reports all problems at once so a misconfigured unit is fixed in one
// go rather than one restart per pin.
func Open(p Profile, byName func(string) gpio.PinIO) (Pins, error) {
	var errs []error
	for _, r := range p.Missing() {
		errs = append(errs, fmt.Errorf("role %s has no pin: set it under [pins] in the config", r))
	}
	if err := p.checkDuplicates(); err != nil {
		errs = append(errs, err)
	}
	rgbSet := 0
	for _, r := range []Role{LEDRed, LEDGreen, LEDBlue} {
		if p.Pins[r] != "" {
			rgbSet++
		}
	}
	if rgbSet > 0 && rgbSet < 3 {
		errs = append(errs, fmt.Errorf("board %s: an RGB LED needs all of led_red, led_green and led_blue under [pins]", p.Name))
	}

	resolved := map[Role]gpio.PinIO{}
	for _, r := range Roles() {
		line := p.Pins[r]
		if line == "" {
			continue
		}
		pin := byName(line)
		if pin == nil {
			errs = append(errs, fmt.Errorf("pin %q for role %s not found on this board (profile %s): check the name with gpioinfo, or override it under [pins] in the config", line, r, p.Name))
			continue
		}
		resolved[r] = pin
	}
	if err := errors.Join(errs...); err != nil {
		return Pins{}, err
	}

	out := Pins{Buttons: map[Role]gpio.PinIO{}}
	for _, r := range ButtonRoles() {
		if pin, ok := resolved[r]; ok {
			out.Buttons[r] = pin
		}
	}
	if p.rgb() {
		out.LED = led.Pins{R: resolved[LEDRed], G: resolved[LEDGreen], B: resolved[LEDBlue]}
	}
	if pin, ok := resolved[LED]; ok {
		out.LED.Single = pin
	}
	out.Actuator = resolved[Shutter]
	if pin, ok := resolved[ShutterOpen]; ok {
		out.OpenSensor = pin
	}
	if pin, ok := resolved[ShutterClosed]; ok {
		out.ClosedSensor = pin
	}
	return out, nil
}
