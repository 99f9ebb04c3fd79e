// Package button turns a GPIO input into debounced press events.
package button

import (
	"fmt"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
)

// Kind is what happened to a button.
type Kind int

const (
	// Down: the contact closed and stayed closed for the debounce time.
	Down Kind = iota + 1
	// Long: the button has been held for Config.LongPress; sent while still held.
	Long
	// Up: the contact opened again (debounced). Held says for how long it was down.
	Up
	// Short: sent together with Up when the button was held less than LongPress.
	Short
)

func (k Kind) String() string {
	switch k {
	case Down:
		return "down"
	case Long:
		return "long"
	case Up:
		return "up"
	case Short:
		return "short"
	}
	return "unknown"
}

// Event is one debounced button event.
type Event struct {
	Button string // Config.Name
	Kind   Kind
	At     time.Time     // when the debounced level was first seen
	Held   time.Duration // for Up, Short and Long: how long it has been down
}

// Config says how a button is wired and how presses are told apart.
type Config struct {
	Name       string        // role name, e.g. "join"; copied into events
	Debounce   time.Duration // default 30ms
	LongPress  time.Duration // default 2s
	ActiveHigh bool          // default false: active-low with pull-up
}

// Defaults applied by New to zero Config fields.
const (
	DefaultDebounce  = 30 * time.Millisecond
	DefaultLongPress = 2 * time.Second
)

// EventBuffer is the capacity of the Events channel. A consumer that falls
// further behind than this stalls the watcher (it does not drop presses).
const EventBuffer = 16

// idleWait bounds WaitForEdge while nothing is pending. It must not be 0:
// gpioioctl reads 0 as "forever" but gpiotest reads it as "don't wait".
// Halt interrupts it on real pins, so its length only matters for pins whose
// Halt cannot interrupt a wait.
const idleWait = time.Hour

// haltGrace is how long Halt waits for the watcher to leave WaitForEdge.
// Pins whose Halt cannot interrupt a wait would otherwise make Halt hang
// until the next edge.
const haltGrace = 200 * time.Millisecond

// Button watches one pin. It owns a goroutine; Halt stops it.
type Button struct {
	pin gpio.PinIn
	cfg Config

	active gpio.Level
	events chan Event
	stop   chan struct{}
	done   chan struct{}

	// mu is held while sending so Halt can close events without racing a
	// watcher that is still stuck in an uninterruptible WaitForEdge.
	mu       sync.Mutex
	halted   bool
	stopOnce sync.Once
}

// New configures pin as an input with edge detection (pull-up when
// active-low, pull-down when active-high) and starts watching it. Events are
// delivered on the returned Button's Events channel. Edge-driven: it waits
// with pin.WaitForEdge and never polls.
func New(pin gpio.PinIn, cfg Config) (*Button, error) {
	if pin == nil {
		return nil, fmt.Errorf("button %s: no pin", cfg.Name)
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.LongPress <= 0 {
		cfg.LongPress = DefaultLongPress
	}
	pull, active := gpio.PullUp, gpio.Low
	if cfg.ActiveHigh {
		pull, active = gpio.PullDown, gpio.High
	}
	if err := pin.In(pull, gpio.BothEdges); err != nil {
		return nil, fmt.Errorf("button %s: configure %s as input: %w", cfg.Name, pin.Name(), err)
	}
	b := &Button{
		pin:    pin,
		cfg:    cfg,
		active: active,
		events: make(chan Event, EventBuffer),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	// Read the starting level here, not in the goroutine: a press that lands
	// between New returning and the goroutine starting must count as a press,
	// not as "held since start".
	go b.run(pin.Read() == active)
	return b, nil
}

// Events delivers debounced events. It is closed after Halt.
func (b *Button) Events() <-chan Event { return b.events }

// Halt stops watching (interrupting WaitForEdge via pin.Halt) and closes Events.
func (b *Button) Halt() error {
	first := false
	b.stopOnce.Do(func() {
		first = true
		// Before taking mu: a watcher blocked on a full channel holds it
		// until stop is closed.
		close(b.stop)
	})
	if !first {
		return nil
	}

	err := b.pin.Halt()
	select {
	case <-b.done:
	case <-time.After(haltGrace):
		// The pin could not interrupt WaitForEdge; the watcher exits without
		// sending at its next wake-up.
	}

	b.mu.Lock()
	b.halted = true
	close(b.events)
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("button %s: halt %s: %w", b.cfg.Name, b.pin.Name(), err)
	}
	return nil
}

func (b *Button) stopped() bool {
	select {
	case <-b.stop:
		return true
	default:
		return false
	}
}

// send blocks while the consumer is behind rather than dropping a press,
// but gives up on Halt.
func (b *Button) send(e Event) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.halted {
		return false
	}
	e.Button = b.cfg.Name
	select {
	case b.events <- e:
		return true
	case <-b.stop:
		return false
	}
}

// settle waits until the line has had no edge for Debounce and returns the
// level then, plus when that stable level began.
func (b *Button) settle(lastEdge time.Time) (gpio.Level, time.Time, bool) {
	for b.pin.WaitForEdge(b.cfg.Debounce) {
		if b.stopped() {
			return gpio.Low, time.Time{}, false
		}
		lastEdge = time.Now()
	}
	if b.stopped() {
		return gpio.Low, time.Time{}, false
	}
	return b.pin.Read(), lastEdge, true
}

func (b *Button) run(heldAtStart bool) {
	defer close(b.done)

	// A button already held at start (stuck, or pressed during boot) is
	// ignored until it is released, so it cannot fire a spurious press.
	down := heldAtStart
	ignore := down
	var downAt time.Time
	longSent := false

	for !b.stopped() {
		timeout := idleWait
		if down && !ignore && !longSent {
			timeout = b.cfg.LongPress - time.Since(downAt)
			if timeout <= 0 {
				longSent = true
				if !b.send(Event{Kind: Long, At: time.Now(), Held: time.Since(downAt)}) {
					return
				}
				continue
			}
		}
		if !b.pin.WaitForEdge(timeout) {
			continue
		}
		if b.stopped() {
			return
		}
		level, at, ok := b.settle(time.Now())
		if !ok {
			return
		}
		isDown := level == b.active
		switch {
		case isDown == down:
			// A bounce that ended where it started.
		case isDown:
			down, downAt, longSent = true, at, false
			if !b.send(Event{Kind: Down, At: at}) {
				return
			}
		default:
			down = false
			if ignore {
				ignore = false
				continue
			}
			held := at.Sub(downAt)
			if !longSent && held < b.cfg.LongPress {
				if !b.send(Event{Kind: Short, At: at, Held: held}) {
					return
				}
			}
			if !b.send(Event{Kind: Up, At: at, Held: held}) {
				return
			}
		}
	}
}
