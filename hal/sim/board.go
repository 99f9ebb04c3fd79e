// Package sim is a simulated room-unit board: periph gpiotest pins with a
// little shutter physics and switchable faults, so the appliance and the
// hal packages can be exercised without hardware.
package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
)

// NotWired in a Config shutter field leaves that part off the board.
const NotWired = "-"

// Defaults for Config.
const (
	DefaultActuator     = "GPIO24"
	DefaultOpenSensor   = "GPIO5"
	DefaultClosedSensor = "GPIO6"
	DefaultTravel       = 300 * time.Millisecond
)

// Config describes the simulated board.
type Config struct {
	Lines []string // line names; default GPIO0..GPIO27
	// Shutter wiring: default GPIO24, GPIO5, GPIO6; NotWired ("-") leaves it
	// off. A name that is not among Lines is also treated as not wired.
	Actuator, OpenSensor, ClosedSensor string
	Travel                             time.Duration // default 300ms: end-to-end move time
}

// Fault is an injectable hardware fault.
type Fault string

const (
	// StuckShutter: the shutter ignores the actuator and stays where it is.
	StuckShutter Fault = "stuck_shutter"
	// SensorDisagree: both shutter sensors read active.
	SensorDisagree Fault = "sensor_disagree"
	// BouncyButtons: SetButton emits a contact-bounce train before settling.
	BouncyButtons Fault = "bouncy_buttons"
	// ShutterDrift: the shutter creeps open by itself while the actuator is Low.
	ShutterDrift Fault = "shutter_drift"
)

// AllFaults lists every Fault, in a stable order.
func AllFaults() []Fault {
	return []Fault{StuckShutter, SensorDisagree, BouncyButtons, ShutterDrift}
}

// Shutter positions reported in ShutterState.Position.
const (
	PosClosed  = "closed"
	PosOpening = "opening"
	PosOpen    = "open"
	PosClosing = "closing"
)

// ShutterState is a snapshot of the simulated shutter.
type ShutterState struct {
	Actuator                 gpio.Level
	Position                 string // "closed", "opening", "open", "closing"
	OpenSensor, ClosedSensor gpio.Level
}

// Board is a set of simulated pins plus shutter physics.
type Board struct {
	names []string
	pins  map[string]*Pin

	act, openS, closedS *Pin
	travel              time.Duration

	// mu guards everything below. Lock order: Board.mu before any Pin lock.
	mu      sync.Mutex
	faults  map[Fault]bool
	pos     string
	gen     uint64 // bumped to cancel a pending travel timer
	pending bool   // a travel timer is running
	timer   *time.Timer
	halted  bool
}

// New builds a board with the shutter closed and every button released.
func New(cfg Config) *Board {
	lines := cfg.Lines
	if len(lines) == 0 {
		for i := 0; i <= 27; i++ {
			lines = append(lines, "GPIO"+strconv.Itoa(i))
		}
	}
	if cfg.Travel <= 0 {
		cfg.Travel = DefaultTravel
	}
	b := &Board{
		pins:   make(map[string]*Pin, len(lines)),
		travel: cfg.Travel,
		faults: make(map[Fault]bool),
		pos:    PosClosed,
	}
	for i, n := range lines {
		if _, dup := b.pins[n]; dup {
			continue
		}
		num := i
		if v, err := strconv.Atoi(strings.TrimPrefix(n, "GPIO")); err == nil && strings.HasPrefix(n, "GPIO") {
			num = v
		}
		// Released buttons (and idle inputs on a Pi) read High via pull-ups.
		p := NewPin(n, num, gpio.High)
		p.board = b
		b.pins[n] = p
		b.names = append(b.names, n)
	}
	pick := func(name, def string) *Pin {
		if name == "" {
			name = def
		}
		return b.pins[name] // nil for NotWired or an unknown line
	}
	b.act = pick(cfg.Actuator, DefaultActuator)
	b.openS = pick(cfg.OpenSensor, DefaultOpenSensor)
	b.closedS = pick(cfg.ClosedSensor, DefaultClosedSensor)
	if b.act != nil {
		b.act.L = gpio.Low
	}
	b.mu.Lock()
	b.applySensorsLocked()
	b.mu.Unlock()
	return b
}

// ByName returns the named line, or nil so it can back board.Open.
func (b *Board) ByName(name string) gpio.PinIO {
	if p, ok := b.pins[name]; ok {
		return p
	}
	return nil
}

// Pin returns the named simulated pin, or nil.
func (b *Board) Pin(name string) *Pin { return b.pins[name] }

// Names lists the lines in board order.
func (b *Board) Names() []string { return slices.Clone(b.names) }

// SetButton drives a button line Low (down) or High (up).
func (b *Board) SetButton(line string, down bool) error {
	p := b.pins[line]
	if p == nil {
		return fmt.Errorf("sim: set button: no line %q", line)
	}
	if p == b.act || p == b.openS || p == b.closedS {
		return fmt.Errorf("sim: set button: line %q is wired to the shutter", line)
	}
	want := gpio.High
	if down {
		want = gpio.Low
	}
	b.mu.Lock()
	bouncy := b.faults[BouncyButtons]
	b.mu.Unlock()
	if bouncy {
		// Five toggles, the last one landing on the wanted level.
		l := want
		for range 4 {
			p.Drive(l)
			l = !l
			time.Sleep(time.Millisecond + rand.N(2*time.Millisecond))
		}
	}
	p.Drive(want)
	return nil
}

// Press holds a button down for hold, then releases it. The button is
// released even when ctx ends early.
func (b *Board) Press(ctx context.Context, line string, hold time.Duration) error {
	if err := b.SetButton(line, true); err != nil {
		return err
	}
	t := time.NewTimer(hold)
	defer t.Stop()
	var ctxErr error
	select {
	case <-t.C:
	case <-ctx.Done():
		ctxErr = ctx.Err()
	}
	if err := b.SetButton(line, false); err != nil {
		return err
	}
	return ctxErr
}

// SetFault switches an injected fault on or off.
func (b *Board) SetFault(f Fault, on bool) error {
	if !slices.Contains(AllFaults(), f) {
		valid := make([]string, 0, 4)
		for _, v := range AllFaults() {
			valid = append(valid, string(v))
		}
		return fmt.Errorf("sim: unknown fault %q (valid: %s)", f, strings.Join(valid, ", "))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.faults[f] = on
	switch f {
	case StuckShutter:
		if on {
			b.freezeLocked()
		} else {
			b.updateLocked()
		}
	case SensorDisagree:
		b.applySensorsLocked()
	case ShutterDrift:
		b.updateLocked()
	}
	return nil
}

// Faults returns the faults that are switched on.
func (b *Board) Faults() map[Fault]bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[Fault]bool, len(b.faults))
	for f, on := range b.faults {
		if on {
			m[f] = true
		}
	}
	return m
}

// Shutter reports the simulated shutter.
func (b *Board) Shutter() ShutterState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := ShutterState{Position: b.pos, OpenSensor: gpio.High, ClosedSensor: gpio.High}
	if b.act != nil {
		s.Actuator = b.act.Read()
	}
	if b.openS != nil {
		s.OpenSensor = b.openS.Read()
	}
	if b.closedS != nil {
		s.ClosedSensor = b.closedS.Read()
	}
	return s
}

// Halt stops the physics; the pins keep their levels.
func (b *Board) Halt() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.halted = true
	b.freezeLocked()
	return nil
}

func (b *Board) outputChanged(p *Pin) {
	if p != b.act {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.updateLocked()
}

// freezeLocked cancels any move in progress, leaving the shutter mid-way.
func (b *Board) freezeLocked() {
	b.gen++
	b.pending = false
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
}

// updateLocked starts a move if the actuator (or drift) wants the shutter
// somewhere it isn't heading already.
func (b *Board) updateLocked() {
	if b.halted || b.faults[StuckShutter] || b.act == nil {
		return
	}
	wantOpen := b.act.Read() == gpio.High || b.faults[ShutterDrift]
	target, moving := PosClosed, PosClosing
	if wantOpen {
		target, moving = PosOpen, PosOpening
	}
	if b.pos == target || (b.pos == moving && b.pending) {
		return
	}
	b.freezeLocked()
	b.pos = moving
	b.applySensorsLocked()
	b.pending = true
	gen := b.gen
	b.timer = time.AfterFunc(b.travel, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.gen != gen || b.halted {
			return
		}
		b.pending = false
		b.timer = nil
		b.pos = target
		b.applySensorsLocked()
	})
}

// applySensorsLocked sets the sensor lines from the position and faults.
// Sensors are switches to ground: Low = active.
func (b *Board) applySensorsLocked() {
	openL, closedL := gpio.High, gpio.High
	switch b.pos {
	case PosOpen:
		openL = gpio.Low
	case PosClosed:
		closedL = gpio.Low
	}
	if b.faults[SensorDisagree] {
		openL, closedL = gpio.Low, gpio.Low
	}
	if b.openS != nil {
		b.openS.Drive(openL)
	}
	if b.closedS != nil {
		b.closedS.Drive(closedL)
	}
}
