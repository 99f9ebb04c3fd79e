// Package shutter drives the camera's physical privacy shutter and watches
// its position sensors.
package shutter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
)

// Position is where the sensors say the shutter is.
type Position int

const (
	Unknown Position = iota // no sensors, or between the two
	Closed
	Open
	Disagree // both sensors active at once: wiring or sensor fault
)

func (p Position) String() string {
	switch p {
	case Unknown:
		return "unknown"
	case Closed:
		return "closed"
	case Open:
		return "open"
	case Disagree:
		return "disagree"
	}
	return fmt.Sprintf("position(%d)", int(p))
}

// FaultKind names a fault.
type FaultKind int

const (
	// Timeout: Open or Close was not confirmed by the sensors in time.
	Timeout FaultKind = iota + 1
	// SensorsDisagree: both the open and the closed sensor are active.
	SensorsDisagree
	// MovedByItself: the sensors changed while no move was commanded.
	MovedByItself
)

func (k FaultKind) String() string {
	switch k {
	case Timeout:
		return "timeout"
	case SensorsDisagree:
		return "sensors_disagree"
	case MovedByItself:
		return "moved_by_itself"
	}
	return fmt.Sprintf("fault(%d)", int(k))
}

// Fault is sent on Faults when something is wrong, and again with Cleared
// set once the sensors are consistent with the commanded position again.
type Fault struct {
	Kind    FaultKind
	Cleared bool
	At      time.Time
	Detail  string // human-readable, names the sensor/pin
}

// Config describes the wiring.
type Config struct {
	Actuator gpio.PinOut // High = drive open; released/Low = spring closes
	// Servo, when set, drives the actuator with PWM instead of a level:
	// OpenDuty/ClosedDuty at Frequency. Released pin = no pulses = the servo
	// is unpowered, so a servo shutter must be spring-returned to fail closed.
	Servo *Servo
	// OpenSensor and ClosedSensor are optional switches to ground (active-low,
	// pull-up). With neither, Open/Close return as soon as the actuator is
	// driven and Confirmed reports false (the appliance refuses this unless
	// config allows it).
	OpenSensor   gpio.PinIn
	ClosedSensor gpio.PinIn
	// Timeout for a move to be confirmed. Default 1.5s.
	Timeout time.Duration
}

// Servo settings for a PWM-driven shutter.
type Servo struct {
	OpenDuty, ClosedDuty gpio.Duty
	Frequency            physic.Frequency
}

// DefaultTimeout applies when Config.Timeout is zero.
const DefaultTimeout = 1500 * time.Millisecond

// Errors wrapped by Open and Close.
var (
	ErrTimeout  = errors.New("shutter move not confirmed in time")
	ErrDisagree = errors.New("shutter sensors disagree")
	ErrHalted   = errors.New("shutter halted")
)

// FaultBuffer is the capacity of Faults. When a consumer falls behind the
// oldest fault is dropped: the newest state matters most, and the sensor
// watchers must never stall on a slow reader.
const FaultBuffer = 32

// watchWait bounds each WaitForEdge: 0 means "forever" to gpioioctl but
// "don't wait" to gpiotest, and Halt interrupts real pins anyway.
const watchWait = time.Hour

// sensorSettle rides out switch bounce before the new position is judged,
// so a bouncing reed or microswitch doesn't raise MovedByItself.
const sensorSettle = 5 * time.Millisecond

const haltGrace = 200 * time.Millisecond

// Shutter owns the actuator pin and a goroutine that watches the sensors.
type Shutter struct {
	cfg  Config
	stop chan struct{}
	wg   sync.WaitGroup

	faults chan Fault

	mu       sync.Mutex
	target   Position
	moving   bool
	atTarget bool // the sensors have confirmed target since it was commanded
	active   map[FaultKind]bool
	changed  chan struct{} // closed and replaced on every sensor change
	halted   bool
}

// New drives the actuator to closed and starts watching the sensors.
func New(cfg Config) (*Shutter, error) {
	if cfg.Actuator == nil {
		return nil, errors.New("shutter: no actuator pin")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	s := &Shutter{
		cfg:     cfg,
		stop:    make(chan struct{}),
		faults:  make(chan Fault, FaultBuffer),
		target:  Closed,
		active:  make(map[FaultKind]bool),
		changed: make(chan struct{}),
	}
	if err := s.driveClosed(); err != nil {
		return nil, fmt.Errorf("shutter: close on start: %w", err)
	}
	for _, sn := range s.sensors() {
		if err := sn.pin.In(gpio.PullUp, gpio.BothEdges); err != nil {
			return nil, fmt.Errorf("shutter: configure %s sensor %s: %w", sn.name, sn.pin.Name(), err)
		}
	}
	s.mu.Lock()
	s.evaluateLocked()
	s.mu.Unlock()
	for _, sn := range s.sensors() {
		s.wg.Add(1)
		go s.watch(sn.pin)
	}
	return s, nil
}

type sensor struct {
	name string
	pin  gpio.PinIn
}

func (s *Shutter) sensors() []sensor {
	var out []sensor
	if s.cfg.OpenSensor != nil {
		out = append(out, sensor{"open", s.cfg.OpenSensor})
	}
	if s.cfg.ClosedSensor != nil {
		out = append(out, sensor{"closed", s.cfg.ClosedSensor})
	}
	return out
}

// Confirmed reports whether moves are confirmed by at least one sensor.
// Without sensors Open and Close succeed as soon as the pin is driven, and
// the caller decides whether that is acceptable.
func (s *Shutter) Confirmed() bool {
	return s.cfg.OpenSensor != nil || s.cfg.ClosedSensor != nil
}

// Target is the last commanded position (Closed after New and after a
// failed Open).
func (s *Shutter) Target() Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.target
}

// Moving reports whether an Open or Close is waiting for confirmation.
func (s *Shutter) Moving() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.moving
}

// Open drives the shutter open and returns once the open sensor confirms it
// (and the closed sensor has released), or an error wrapping ErrTimeout or
// ErrDisagree. On error the actuator is driven back to closed.
func (s *Shutter) Open(ctx context.Context) error {
	if err := s.begin(Open); err != nil {
		return fmt.Errorf("open shutter: %w", err)
	}
	err := s.driveOpen()
	if err == nil {
		err = s.await(ctx, Open)
	}
	if err != nil {
		// Fail closed: whatever went wrong, don't leave the camera exposed.
		cerr := s.driveClosed()
		s.finish(Closed, false)
		return fmt.Errorf("open shutter: %w", errors.Join(err, cerr))
	}
	s.finish(Open, true)
	return nil
}

// Close drives the shutter closed and returns once the closed sensor
// confirms. The actuator is released first, so even a failed Close leaves
// the pin in the fail-closed state.
func (s *Shutter) Close(ctx context.Context) error {
	if err := s.begin(Closed); err != nil {
		return fmt.Errorf("close shutter: %w", err)
	}
	err := s.driveClosed()
	if err == nil {
		err = s.await(ctx, Closed)
	}
	s.finish(Closed, err == nil)
	if err != nil {
		return fmt.Errorf("close shutter: %w", err)
	}
	return nil
}

// Position reads the sensors now.
func (s *Shutter) Position() Position {
	open := s.cfg.OpenSensor != nil && s.cfg.OpenSensor.Read() == gpio.Low
	closed := s.cfg.ClosedSensor != nil && s.cfg.ClosedSensor.Read() == gpio.Low
	switch {
	case open && closed:
		return Disagree
	case open:
		return Open
	case closed:
		return Closed
	}
	return Unknown
}

// Faults delivers fault and fault-cleared events. Closed after Halt.
func (s *Shutter) Faults() <-chan Fault { return s.faults }

// Halt releases the actuator (closed) and stops watching.
func (s *Shutter) Halt() error {
	s.mu.Lock()
	if s.halted {
		s.mu.Unlock()
		return nil
	}
	s.halted = true
	close(s.stop)
	s.mu.Unlock()

	var errs []error
	if err := s.cfg.Actuator.Out(gpio.Low); err != nil {
		errs = append(errs, fmt.Errorf("release actuator %s: %w", s.cfg.Actuator.Name(), err))
	}
	for _, sn := range s.sensors() {
		if err := sn.pin.Halt(); err != nil {
			errs = append(errs, fmt.Errorf("halt %s sensor %s: %w", sn.name, sn.pin.Name(), err))
		}
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(haltGrace):
		// A pin whose Halt can't interrupt WaitForEdge; its watcher exits
		// at the next wake-up without touching the closed channel.
	}
	s.mu.Lock()
	close(s.faults)
	s.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("halt shutter: %w", err)
	}
	return nil
}

func (s *Shutter) driveOpen() error {
	if sv := s.cfg.Servo; sv != nil {
		return s.cfg.Actuator.PWM(sv.OpenDuty, sv.Frequency)
	}
	return s.cfg.Actuator.Out(gpio.High)
}

func (s *Shutter) driveClosed() error {
	if sv := s.cfg.Servo; sv != nil {
		return s.cfg.Actuator.PWM(sv.ClosedDuty, sv.Frequency)
	}
	return s.cfg.Actuator.Out(gpio.Low)
}

func (s *Shutter) begin(target Position) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.halted {
		return ErrHalted
	}
	s.target = target
	s.moving = true
	s.atTarget = false
	return nil
}

// finish ends a move. A confirmed move clears every outstanding fault: the
// hardware just proved it works.
func (s *Shutter) finish(target Position, confirmed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.target = target
	s.moving = false
	if confirmed && s.Confirmed() {
		s.atTarget = true
		s.clearLocked()
	}
}

// satisfied reports whether every wired sensor agrees with want, so a
// single-sensor shutter can still confirm both directions.
func (s *Shutter) satisfied(want Position) bool {
	openActive := s.cfg.OpenSensor != nil && s.cfg.OpenSensor.Read() == gpio.Low
	closedActive := s.cfg.ClosedSensor != nil && s.cfg.ClosedSensor.Read() == gpio.Low
	switch want {
	case Open:
		return !closedActive && (s.cfg.OpenSensor == nil || openActive)
	case Closed:
		return !openActive && (s.cfg.ClosedSensor == nil || closedActive)
	}
	return false
}

func (s *Shutter) await(ctx context.Context, want Position) error {
	if !s.Confirmed() {
		return nil
	}
	deadline := time.NewTimer(s.cfg.Timeout)
	defer deadline.Stop()
	for {
		// Take the signal before reading the pins so a change between the
		// two can't be missed.
		s.mu.Lock()
		changed := s.changed
		s.mu.Unlock()
		if s.Position() == Disagree {
			return fmt.Errorf("%w: %s", ErrDisagree, s.disagreeDetail())
		}
		if s.satisfied(want) {
			return nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			detail := s.timeoutDetail(want)
			s.mu.Lock()
			s.raiseLocked(Timeout, detail)
			s.mu.Unlock()
			return fmt.Errorf("%w: %s", ErrTimeout, detail)
		case <-ctx.Done():
			return ctx.Err()
		case <-s.stop:
			return ErrHalted
		}
	}
}

func (s *Shutter) timeoutDetail(want Position) string {
	t := s.cfg.Timeout
	os, cs := s.cfg.OpenSensor, s.cfg.ClosedSensor
	openActive := os != nil && os.Read() == gpio.Low
	closedActive := cs != nil && cs.Read() == gpio.Low
	if want == Open {
		switch {
		case closedActive:
			return fmt.Sprintf("closed sensor %s still active after %s: the shutter did not move; check the actuator %s and its supply", cs.Name(), t, s.cfg.Actuator.Name())
		case os != nil && !openActive:
			return fmt.Sprintf("open sensor %s still inactive after %s: check the open switch wiring", os.Name(), t)
		}
	} else {
		switch {
		case openActive:
			return fmt.Sprintf("open sensor %s still active after %s: the shutter did not move; check the return spring and actuator %s", os.Name(), t, s.cfg.Actuator.Name())
		case cs != nil && !closedActive:
			return fmt.Sprintf("closed sensor %s still inactive after %s: check the closed switch wiring", cs.Name(), t)
		}
	}
	return fmt.Sprintf("shutter not confirmed %s after %s", want, t)
}

func (s *Shutter) disagreeDetail() string {
	return fmt.Sprintf("open sensor %s and closed sensor %s are both active: check for a short or a stuck switch",
		s.cfg.OpenSensor.Name(), s.cfg.ClosedSensor.Name())
}

// watch follows one sensor pin. Each change is re-judged from both pins,
// so it does not matter which watcher sees it first.
func (s *Shutter) watch(pin gpio.PinIn) {
	defer s.wg.Done()
	for {
		if !pin.WaitForEdge(watchWait) {
			if s.isStopped() {
				return
			}
			continue
		}
		for pin.WaitForEdge(sensorSettle) {
			if s.isStopped() {
				return
			}
		}
		if s.isStopped() {
			return
		}
		s.mu.Lock()
		s.evaluateLocked()
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}
}

func (s *Shutter) isStopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// evaluateLocked raises or clears faults for the position now.
func (s *Shutter) evaluateLocked() {
	pos := s.Position()
	if pos == Disagree {
		s.raiseLocked(SensorsDisagree, s.disagreeDetail())
		return
	}
	if s.satisfied(s.target) {
		if !s.moving {
			s.atTarget = true
		}
		s.clearLocked()
		return
	}
	// Only a shutter that had reached its target can "move by itself";
	// before that, changes are the commanded (or fail-closed) move.
	if !s.moving && s.atTarget {
		detail := fmt.Sprintf("shutter moved to %s without a command (commanded %s)", pos, s.target)
		if s.cfg.OpenSensor != nil && s.cfg.ClosedSensor != nil {
			detail += fmt.Sprintf("; open sensor %s %s, closed sensor %s %s",
				s.cfg.OpenSensor.Name(), activeWord(s.cfg.OpenSensor), s.cfg.ClosedSensor.Name(), activeWord(s.cfg.ClosedSensor))
		}
		s.raiseLocked(MovedByItself, detail)
	}
}

func activeWord(p gpio.PinIn) string {
	if p.Read() == gpio.Low {
		return "active"
	}
	return "inactive"
}

func (s *Shutter) raiseLocked(k FaultKind, detail string) {
	if s.active[k] {
		return
	}
	s.active[k] = true
	s.sendLocked(Fault{Kind: k, At: time.Now(), Detail: detail})
}

func (s *Shutter) clearLocked() {
	for _, k := range []FaultKind{Timeout, SensorsDisagree, MovedByItself} {
		if !s.active[k] {
			continue
		}
		delete(s.active, k)
		s.sendLocked(Fault{Kind: k, Cleared: true, At: time.Now(),
			Detail: fmt.Sprintf("shutter %s again as commanded", s.target)})
	}
}

// sendLocked never blocks: it runs under mu, from watchers and from Open.
func (s *Shutter) sendLocked(f Fault) {
	if s.halted {
		return
	}
	for {
		select {
		case s.faults <- f:
			return
		default:
		}
		select {
		case <-s.faults:
		default:
		}
	}
}
