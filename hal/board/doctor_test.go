package board

import (
	"strings"
	"testing"

	"github.com/konsult/konsult/hal/sim"
)

func checksByName(cs []Check) map[string]Check {
	m := map[string]Check{}
	for _, c := range cs {
		m[c.Name] = c
	}
	return m
}

func TestWiringChecksOnSim(t *testing.T) {
	b := sim.New(sim.Config{})
	p, _ := Lookup("pi5")
	pins, err := Open(p, b.ByName)
	if err != nil {
		t.Fatal(err)
	}
	got := checksByName(p.WiringChecks(pins, "closed", true, "off"))
	for _, name := range []string{"button join", "button leave", "button privacy", "button mute", "shutter sensors", "shutter actuator", "led"} {
		if c, ok := got[name]; !ok || !c.OK {
			t.Errorf("%s: %+v (present %v)", name, c, ok)
		}
	}
	if d := got["button join"].Detail; d != "GPIO17 (header pin 11) reads released" {
		t.Errorf("join detail %q", d)
	}
	if d := got["shutter actuator"].Detail; !strings.HasPrefix(d, "GPIO24 (header pin 18) drives the shutter open") {
		t.Errorf("actuator detail %q", d)
	}
	if d := got["led"].Detail; d != "pulse by PWM; now off" {
		t.Errorf("led detail %q", d)
	}

	// A button held at rest, a shutter the unit thinks open but whose
	// sensors say closed, an LED without PWM.
	if err := b.SetButton("GPIO17", true); err != nil {
		t.Fatal(err)
	}
	got = checksByName(p.WiringChecks(pins, "open", false, "solid green"))
	if c := got["button join"]; c.OK || !strings.Contains(c.Detail, "pressed at rest") || !strings.Contains(c.Fix, "active-low") {
		t.Errorf("held button: %+v", c)
	}
	if c := got["shutter sensors"]; c.OK || !strings.Contains(c.Detail, "should be open") || c.Fix == "" {
		t.Errorf("open shutter, closed sensors: %+v", c)
	}
	if d := got["led"].Detail; !strings.Contains(d, "heartbeat blink") {
		t.Errorf("led without PWM: %q", d)
	}

	if err := b.SetFault(sim.SensorDisagree, true); err != nil {
		t.Fatal(err)
	}
	if c := checksByName(p.WiringChecks(pins, "closed", true, "off"))["shutter sensors"]; c.OK || !strings.Contains(c.Detail, "both the open sensor") {
		t.Errorf("both sensors active: %+v", c)
	}
}

func TestWiringChecksWithoutSensors(t *testing.T) {
	b := sim.New(sim.Config{})
	p, _ := Lookup("pi4")
	p, err := p.With(map[Role]string{ShutterOpen: "", ShutterClosed: ""})
	if err != nil {
		t.Fatal(err)
	}
	pins, err := Open(p, b.ByName)
	if err != nil {
		t.Fatal(err)
	}
	c := checksByName(p.WiringChecks(pins, "closed", true, "off"))["shutter sensors"]
	if c.OK || !strings.Contains(c.Detail, "cannot confirm the shutter is closed") || !strings.Contains(c.Fix, "shutter_open") {
		t.Errorf("no sensors: %+v", c)
	}
}
