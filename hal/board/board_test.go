package board

import (
	"slices"
	"strings"
	"testing"

	"periph.io/x/conn/v3/gpio"

	"github.com/konsult/konsult/hal/sim"
)

func TestRolesOrder(t *testing.T) {
	want := []Role{"join", "leave", "privacy", "mute", "led", "led_red", "led_green", "led_blue", "shutter", "shutter_open", "shutter_closed"}
	if !slices.Equal(Roles(), want) {
		t.Fatalf("Roles() = %v", Roles())
	}
}

func TestLookup(t *testing.T) {
	for _, name := range []string{"pi4", "pi5"} {
		p, err := Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		if p.Pins[Join] != "GPIO17" || p.Pins[ShutterOpen] != "GPIO5" || p.Header["GPIO17"] != 11 || p.Header["GPIO6"] != 31 {
			t.Errorf("%s: %+v", name, p)
		}
		if _, ok := p.Pins[LEDRed]; ok {
			t.Errorf("%s: RGB set by default", name)
		}
		if len(p.Missing()) != 0 {
			t.Errorf("%s: missing %v", name, p.Missing())
		}
	}
	g, err := Lookup("generic")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(g.Missing(), []Role{Join, LED, Shutter}) {
		t.Errorf("generic missing %v", g.Missing())
	}
	_, err = Lookup("pi3")
	if err == nil || !strings.Contains(err.Error(), "pi4, pi5, generic") {
		t.Errorf("unknown board error %v should list valid names", err)
	}
}

func TestLookupReturnsCopies(t *testing.T) {
	p, _ := Lookup("pi4")
	p.Pins[Join] = "GPIO2"
	q, _ := Lookup("pi4")
	if q.Pins[Join] != "GPIO17" {
		t.Fatal("Lookup shares its map between callers")
	}
}

func TestWith(t *testing.T) {
	p, _ := Lookup("pi4")
	q, err := p.With(map[Role]string{Join: "GPIO26", LED: "", LEDRed: "GPIO12", LEDGreen: "GPIO13", LEDBlue: "GPIO19"})
	if err != nil {
		t.Fatal(err)
	}
	if q.Pins[Join] != "GPIO26" || q.Pins[LEDRed] != "GPIO12" {
		t.Errorf("%v", q.Pins)
	}
	if _, ok := q.Pins[LED]; ok {
		t.Error(`"" did not remove led`)
	}
	if p.Pins[Join] != "GPIO17" {
		t.Error("With modified the original")
	}
	if len(q.Missing()) != 0 {
		t.Errorf("RGB should stand in for led: missing %v", q.Missing())
	}
}

func TestWithUnknownRole(t *testing.T) {
	p, _ := Lookup("pi4")
	_, err := p.With(map[Role]string{"joyn": "GPIO2"})
	if err == nil || !strings.Contains(err.Error(), `"joyn"`) || !strings.Contains(err.Error(), "shutter_closed") {
		t.Fatalf("error %v should name the role and list valid roles", err)
	}
}

func TestWithPinUsedTwice(t *testing.T) {
	p, _ := Lookup("pi4")
	_, err := p.With(map[Role]string{Mute: "GPIO17"})
	if err == nil {
		t.Fatal("want error")
	}
	for _, s := range []string{"GPIO17", "join", "mute"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q should contain %q", err, s)
		}
	}
}

func TestOpenOnSim(t *testing.T) {
	b := sim.New(sim.Config{})
	p, _ := Lookup("pi5")
	pins, err := Open(p, b.ByName)
	if err != nil {
		t.Fatal(err)
	}
	if len(pins.Buttons) != 4 || pins.Buttons[Join] != gpio.PinIO(b.Pin("GPIO17")) {
		t.Errorf("buttons %v", pins.Buttons)
	}
	if pins.LED.Single != gpio.PinOut(b.Pin("GPIO18")) || pins.LED.R != nil {
		t.Errorf("led %+v", pins.LED)
	}
	if pins.Actuator != gpio.PinIO(b.Pin("GPIO24")) || pins.OpenSensor != gpio.PinIO(b.Pin("GPIO5")) || pins.ClosedSensor != gpio.PinIO(b.Pin("GPIO6")) {
		t.Errorf("shutter pins %+v", pins)
	}
}

func TestOpenOptionalRolesAbsent(t *testing.T) {
	b := sim.New(sim.Config{})
	p, _ := Lookup("pi4")
	p, err := p.With(map[Role]string{Leave: "", ShutterOpen: "", ShutterClosed: "", LED: "", LEDRed: "GPIO12", LEDGreen: "GPIO13", LEDBlue: "GPIO19"})
	if err != nil {
		t.Fatal(err)
	}
	pins, err := Open(p, b.ByName)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pins.Buttons[Leave]; ok {
		t.Error("leave present")
	}
	if pins.OpenSensor != nil || pins.ClosedSensor != nil {
		t.Error("sensors should be nil")
	}
	if pins.LED.Single != nil || pins.LED.B != gpio.PinOut(b.Pin("GPIO19")) {
		t.Errorf("led %+v", pins.LED)
	}
}

func TestOpenCollectsAllMissingPins(t *testing.T) {
	b := sim.New(sim.Config{Lines: []string{"GPIO17", "GPIO18", "GPIO24"}})
	p, _ := Lookup("pi4")
	p, err := p.With(map[Role]string{ShutterOpen: "GPIO99"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(p, b.ByName)
	if err == nil {
		t.Fatal("want error")
	}
	msg := err.Error()
	want := `pin "GPIO99" for role shutter_open not found on this board (profile pi4): check the name with gpioinfo, or override it under [pins] in the config`
	if !strings.Contains(msg, want) {
		t.Errorf("error %q lacks %q", msg, want)
	}
	for _, s := range []string{`"GPIO27" for role leave`, `"GPIO6" for role shutter_closed`, `"GPIO23" for role mute`} {
		if !strings.Contains(msg, s) {
			t.Errorf("error should also report %s", s)
		}
	}
	if strings.Contains(msg, "GPIO17") {
		t.Error("reported a pin that exists")
	}
}

func TestOpenGenericNeedsRequiredRoles(t *testing.T) {
	p, _ := Lookup("generic")
	_, err := Open(p, func(string) gpio.PinIO { return nil })
	if err == nil {
		t.Fatal("want error")
	}
	for _, r := range []string{"join", "led", "shutter"} {
		if !strings.Contains(err.Error(), "role "+r+" has no pin: set it under [pins] in the config") {
			t.Errorf("error %q lacks role %s", err, r)
		}
	}
}

func TestOpenPartialRGB(t *testing.T) {
	b := sim.New(sim.Config{})
	p, _ := Lookup("pi4")
	p, _ = p.With(map[Role]string{LEDRed: "GPIO12"})
	if _, err := Open(p, b.ByName); err == nil || !strings.Contains(err.Error(), "led_blue") {
		t.Errorf("partial RGB: %v", err)
	}
}
