package board

import (
	"fmt"

	"periph.io/x/conn/v3/gpio"
)

// Check is one line of the unit's self-check (roomctl doctor) about the
// wiring. The caller maps it to its API's type.
type Check struct {
	Name   string
	OK     bool
	Detail string
	Fix    string
}

// WiringChecks checks the wiring as far as software can see it; each
// failure names the pin (and its header pin) and the likely fix. shutter
// and ledNow are where the unit believes the shutter and the LED are
// ("open", "closed", ...; the LED's pattern), ledPWM whether the LED pin
// pulses by PWM.
func (p Profile) WiringChecks(pins Pins, shutter string, ledPWM bool, ledNow string) []Check {
	var out []Check
	where := func(line string) string {
		if h := p.Header[line]; h != 0 {
			return fmt.Sprintf("%s (header pin %d)", line, h)
		}
		return line
	}
	for _, r := range ButtonRoles() {
		b := pins.Buttons[r]
		if b == nil {
			continue
		}
		c := Check{Name: "button " + string(r), OK: b.Read() == gpio.High}
		if c.OK {
			c.Detail = where(b.Name()) + " reads released"
		} else {
			c.Detail = where(b.Name()) + " reads pressed at rest"
			c.Fix = "if nobody is pressing it: the line is shorted to ground or the button is wired normally-closed; buttons go between the pin and ground (active-low, pull-up)"
		}
		out = append(out, c)
	}
	if pins.OpenSensor != nil && pins.ClosedSensor != nil {
		o, cl := pins.OpenSensor.Read() == gpio.Low, pins.ClosedSensor.Read() == gpio.Low
		c := Check{Name: "shutter sensors"}
		switch {
		case o && cl:
			c.Detail = fmt.Sprintf("both the open sensor %s and the closed sensor %s are active", where(pins.OpenSensor.Name()), where(pins.ClosedSensor.Name()))
			c.Fix = "a sensor is stuck or shorted to ground, or both switches are wired to the same line; each switch goes between its own pin and ground"
		case shutter == "closed" && !cl:
			c.Detail = fmt.Sprintf("the shutter should be closed but the closed sensor %s is not active (open sensor active: %v)", where(pins.ClosedSensor.Name()), o)
			c.Fix = "check the closed switch and its wire to ground; if the shutter is visibly open, check the actuator " + where(pins.Actuator.Name()) + " and its relay"
		case shutter == "open" && !o:
			c.Detail = fmt.Sprintf("the shutter should be open but the open sensor %s is not active", where(pins.OpenSensor.Name()))
			c.Fix = "check the open switch and its wire to ground"
		default:
			c.OK = true
			c.Detail = fmt.Sprintf("open sensor %s active=%v, closed sensor %s active=%v; shutter %s", where(pins.OpenSensor.Name()), o, where(pins.ClosedSensor.Name()), cl, shutter)
		}
		out = append(out, c)
	} else {
		out = append(out, Check{Name: "shutter sensors", OK: false,
			Detail: "no open/closed sensors configured: the unit cannot confirm the shutter is closed",
			Fix:    "wire a switch for each end stop to ground and set pins shutter_open and shutter_closed"})
	}
	out = append(out, Check{Name: "shutter actuator", OK: true,
		Detail: where(pins.Actuator.Name()) + " drives the shutter open when high; released or low = closed by the spring"})
	ledDetail := "pulse by PWM"
	if !ledPWM {
		ledDetail = "no PWM on this pin: pulse is shown as a heartbeat blink"
	}
	out = append(out, Check{Name: "led", OK: true, Detail: ledDetail + "; now " + ledNow})
	return out
}
