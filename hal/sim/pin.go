package sim

import (
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"
	"periph.io/x/conn/v3/physic"
)

// historyCap bounds History so a long-running simulated LED can't grow
// memory without limit.
const historyCap = 1024

// edgeBuffer is EdgesChan's capacity: deep enough for a bounce train plus
// the physics edges without the sender ever blocking.
const edgeBuffer = 64

// Change is one level change on a simulated output.
type Change struct {
	At    time.Time
	Level gpio.Level
}

// Pin is a periph gpiotest pin that behaves closer to real hardware:
// Halt wakes a pending WaitForEdge, an externally driven level survives In,
// and output changes are recorded and fed to the board's physics.
//
// Drive its input side with Drive (or the Board helpers), not by writing
// EdgesChan directly: Drive sets the level before signalling the edge, the
// way a real line is already at its new level when the edge interrupt fires.
type Pin struct {
	gpiotest.Pin

	board *Board // nil for a stand-alone pin

	// driven is guarded by the embedded gpiotest mutex.
	driven bool

	hmu  sync.Mutex
	hist []Change
}

// NewPin returns a stand-alone simulated pin (not attached to a Board).
func NewPin(name string, num int, level gpio.Level) *Pin {
	p := &Pin{}
	p.N, p.Num, p.L = name, num, level
	p.EdgesChan = make(chan gpio.Level, edgeBuffer)
	return p
}

// Out records the change and lets the board's physics react to it.
func (p *Pin) Out(l gpio.Level) error {
	p.Lock()
	changed := p.L != l
	p.L = l
	p.Unlock()
	if changed {
		p.record(l)
	}
	if p.board != nil {
		p.board.outputChanged(p)
	}
	return nil
}

// PWM records the duty like gpiotest and, because a PWM output is no
// longer a plain level, counts a non-zero duty as High in History.
func (p *Pin) PWM(duty gpio.Duty, f physic.Frequency) error {
	l := gpio.Level(duty > 0)
	p.Lock()
	p.D, p.F = duty, f
	changed := p.L != l
	p.L = l
	p.Unlock()
	if changed {
		p.record(l)
	}
	return nil
}

// Duty is the last PWM duty set.
func (p *Pin) Duty() gpio.Duty {
	p.Lock()
	defer p.Unlock()
	return p.D
}

// Level is the pin's current level, without waiting.
func (p *Pin) Level() gpio.Level { return p.Read() }

// In keeps a level that something outside drives (a pressed button, a
// sensor switch), like real hardware where a closed switch beats the pull.
func (p *Pin) In(pull gpio.Pull, edge gpio.Edge) error {
	p.Lock()
	defer p.Unlock()
	p.P = pull
	if !p.driven {
		switch pull {
		case gpio.PullUp:
			p.L = gpio.High
		case gpio.PullDown:
			p.L = gpio.Low
		}
	}
	for {
		select {
		case <-p.EdgesChan:
		default:
			return nil
		}
	}
}

// Pull implements gpio.PinIn; unlike gpiotest it takes the lock.
func (p *Pin) Pull() gpio.Pull {
	p.Lock()
	defer p.Unlock()
	return p.P
}

// DefaultPull implements gpio.PinIn.
func (p *Pin) DefaultPull() gpio.Pull { return p.Pull() }

// WaitForEdge waits for an edge sent by Drive or Halt. A negative timeout
// waits forever; 0 does not wait (gpiotest semantics).
func (p *Pin) WaitForEdge(timeout time.Duration) bool {
	if timeout < 0 {
		<-p.EdgesChan
		return true
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.EdgesChan:
		return true
	case <-t.C:
		return false
	}
}

// Halt wakes a pending WaitForEdge so its owner can notice it was stopped,
// which is what gpioioctl's Halt does on real hardware.
func (p *Pin) Halt() error {
	select {
	case p.EdgesChan <- p.Read():
	default:
	}
	return nil
}

// Drive sets the level from outside (a switch or button) and signals an
// edge if it changed.
func (p *Pin) Drive(l gpio.Level) {
	p.Lock()
	p.driven = true
	changed := p.L != l
	p.L = l
	p.Unlock()
	if changed {
		select {
		case p.EdgesChan <- l:
		default:
			// The waiter is far behind; the level is already set, and it
			// reads that after the edges it does get.
		}
	}
}

// History lists level changes on the output, oldest first (the last 1024).
func (p *Pin) History() []Change {
	p.hmu.Lock()
	defer p.hmu.Unlock()
	return append([]Change(nil), p.hist...)
}

// ResetHistory forgets recorded changes.
func (p *Pin) ResetHistory() {
	p.hmu.Lock()
	p.hist = nil
	p.hmu.Unlock()
}

func (p *Pin) record(l gpio.Level) {
	p.hmu.Lock()
	defer p.hmu.Unlock()
	p.hist = append(p.hist, Change{At: time.Now(), Level: l})
	if len(p.hist) > historyCap {
		p.hist = append(p.hist[:0:0], p.hist[len(p.hist)-historyCap:]...)
	}
}

var _ gpio.PinIO = (*Pin)(nil)
