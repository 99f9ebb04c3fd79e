// Package led drives a status LED (single colour or RGB) with patterns.
//
// Pulse "breathes" by stepping the PWM duty along a triangle wave (2s
// period, 20 steps a second). When the pin cannot do PWM (New probes it),
// Pulse falls back to a heartbeat blink: 100ms on, 100ms off, 100ms on,
// 700ms off, which still reads as "alive but different from a blink".
package led

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
)

// Pattern is what the LED does over time.
type Pattern int

const (
	Off       Pattern = iota
	Solid             // on
	SlowBlink         // 1 Hz, 50% duty
	FastBlink         // 4 Hz, 50% duty
	Pulse             // breathing via PWM; blink fallback (see package doc) when the pin has no PWM
	Beacon            // a 100 ms flash every 2 s: waiting, and unlike every other pattern
)

func (p Pattern) String() string {
	switch p {
	case Off:
		return "off"
	case Solid:
		return "solid"
	case SlowBlink:
		return "slow_blink"
	case FastBlink:
		return "fast_blink"
	case Pulse:
		return "pulse"
	case Beacon:
		return "beacon"
	}
	return fmt.Sprintf("pattern(%d)", int(p))
}

// Color applies to RGB LEDs; a single LED ignores it.
type Color int

const (
	White Color = iota
	Red
	Green
	Blue
	Amber
)

func (c Color) String() string {
	switch c {
	case White:
		return "white"
	case Red:
		return "red"
	case Green:
		return "green"
	case Blue:
		return "blue"
	case Amber:
		return "amber"
	}
	return fmt.Sprintf("color(%d)", int(c))
}

// State is a pattern in a colour.
type State struct {
	Pattern Pattern
	Color   Color
}

// Pins: either Single, or all of R, G, B.
type Pins struct {
	Single  gpio.PinOut
	R, G, B gpio.PinOut
}

// PWMFrequency is the PWM carrier used for Pulse: well above flicker, and
// low enough for software PWM drivers.
const PWMFrequency = 1 * physic.KiloHertz

// Pulse timing.
const (
	PulsePeriod = 2 * time.Second
	pulseSteps  = 40 // 20 steps/s over PulsePeriod
)

// ErrHalted is returned by Set after Halt.
var ErrHalted = errors.New("led halted")

// step is one phase of a pattern: a duty held for dur (0 = forever).
type step struct {
	duty gpio.Duty
	dur  time.Duration
}

// LED owns an animation goroutine; Halt turns it off and stops it.
type LED struct {
	pins []gpio.PinOut // Single, or R, G, B
	rgb  bool
	pwm  bool

	mu     sync.Mutex
	state  State
	steps  []step
	idx    int
	gen    uint64 // bumped by Set so a timer armed for the old pattern is ignored
	halted bool

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

// New turns the LED off and starts it.
func New(p Pins) (*LED, error) {
	l := &LED{
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	switch {
	case p.R != nil && p.G != nil && p.B != nil:
		l.pins, l.rgb = []gpio.PinOut{p.R, p.G, p.B}, true
	case p.Single != nil:
		l.pins = []gpio.PinOut{p.Single}
	default:
		return nil, errors.New("led: no pins: need Single, or all of R, G and B")
	}
	// Probing is the only portable way to learn whether a driver does PWM
	// on this line: gpioioctl refuses, bcm283x accepts on some pins.
	l.pwm = true
	for _, pin := range l.pins {
		if err := pin.PWM(0, PWMFrequency); err != nil {
			l.pwm = false
		}
	}
	for _, pin := range l.pins {
		if err := pin.Out(gpio.Low); err != nil {
			return nil, fmt.Errorf("led: switch %s off: %w", pin.Name(), err)
		}
	}
	l.steps = l.stepsFor(Off)
	go l.run()
	return l, nil
}

// Set changes the pattern; the change is visible on the pins before Set returns.
func (l *LED) Set(s State) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.halted {
		return fmt.Errorf("led: set %s: %w", s.Pattern, ErrHalted)
	}
	l.state = s
	l.steps = l.stepsFor(s.Pattern)
	l.idx = 0
	l.gen++
	err := l.renderLocked()
	select {
	case l.wake <- struct{}{}:
	default: // a wake-up is already pending; it will pick up this state
	}
	if err != nil {
		return fmt.Errorf("led: set %s %s: %w", s.Pattern, s.Color, err)
	}
	return nil
}

// State returns the current state.
func (l *LED) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

// HasPWM reports whether Pulse is rendered with PWM (true) or the blink fallback.
func (l *LED) HasPWM() bool { return l.pwm }

// Halt switches the LED off and stops the animation goroutine.
func (l *LED) Halt() error {
	l.mu.Lock()
	if l.halted {
		l.mu.Unlock()
		return nil
	}
	l.halted = true
	close(l.stop)
	l.mu.Unlock()
	<-l.done

	var errs []error
	for _, pin := range l.pins {
		if err := pin.Out(gpio.Low); err != nil {
			errs = append(errs, fmt.Errorf("led: switch %s off: %w", pin.Name(), err))
		}
	}
	return errors.Join(errs...)
}

func (l *LED) stepsFor(p Pattern) []step {
	const on, off = gpio.DutyMax, 0
	switch p {
	case Solid:
		return []step{{on, 0}}
	case SlowBlink:
		return []step{{on, 500 * time.Millisecond}, {off, 500 * time.Millisecond}}
	case FastBlink:
		return []step{{on, 125 * time.Millisecond}, {off, 125 * time.Millisecond}}
	case Beacon:
		return []step{{on, 100 * time.Millisecond}, {off, 1900 * time.Millisecond}}
	case Pulse:
		if !l.pwm {
			ms := time.Millisecond
			return []step{{on, 100 * ms}, {off, 100 * ms}, {on, 100 * ms}, {off, 700 * ms}}
		}
		// Triangle starting at full brightness so Set(Pulse) is visibly
		// "on" at once, like the blink patterns.
		s := make([]step, pulseSteps)
		half := pulseSteps / 2
		for i := range s {
			d := i - half
			if d < 0 {
				d = -d
			}
			s[i] = step{gpio.Duty(int64(gpio.DutyMax) * int64(d) / int64(half)), PulsePeriod / pulseSteps}
		}
		return s
	}
	return []step{{off, 0}}
}

// mask says which of l.pins are lit for the current colour.
func (l *LED) maskLocked() []bool {
	if !l.rgb {
		return []bool{true}
	}
	switch l.state.Color {
	case Red:
		return []bool{true, false, false}
	case Green:
		return []bool{false, true, false}
	case Blue:
		return []bool{false, false, true}
	case Amber:
		return []bool{true, true, false}
	}
	return []bool{true, true, true}
}

func (l *LED) renderLocked() error {
	st := l.steps[l.idx]
	usePWM := l.pwm && l.state.Pattern == Pulse
	var errs []error
	for i, lit := range l.maskLocked() {
		pin := l.pins[i]
		var err error
		switch {
		case !lit:
			err = pin.Out(gpio.Low)
		case usePWM:
			err = pin.PWM(st.duty, PWMFrequency)
		default:
			err = pin.Out(gpio.Level(st.duty > 0))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", pin.Name(), err))
		}
	}
	return errors.Join(errs...)
}

func (l *LED) run() {
	defer close(l.done)
	t := time.NewTimer(time.Hour)
	t.Stop()
	var armed uint64
	arm := func() {
		// Called with l.mu held.
		armed = l.gen
		if d := l.steps[l.idx].dur; d > 0 {
			t.Reset(d)
		} else {
			t.Stop()
		}
	}
	for {
		select {
		case <-l.stop:
			t.Stop()
			return
		case <-l.wake:
			l.mu.Lock()
			arm()
			l.mu.Unlock()
		case <-t.C:
			l.mu.Lock()
			if l.gen == armed && !l.halted {
				l.idx = (l.idx + 1) % len(l.steps)
				// A failed write mid-animation has nowhere useful to go;
				// the next phase simply tries again.
				_ = l.renderLocked()
				arm()
			}
			l.mu.Unlock()
		}
	}
}
