// Package appliance is the room unit's brain: the one place that decides.
//
// Buttons, the local API, the fleet, the shutter and the conference report
// to a Machine; the Machine decides (in core, a pure state machine) and
// tells the gate, the shutter, the LED and the conference what to do. The
// privacy gate and the LED are derived from the same facts in one function
// (core.settle), which is what makes invariants 1–4 of DESIGN.md hold.
package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/konsult/konsult/hal/button"
	"github.com/konsult/konsult/hal/led"
	"github.com/konsult/konsult/hal/shutter"
	"github.com/konsult/konsult/media"
	"github.com/konsult/konsult/media/gate"
)

// Shutter is what the appliance needs of hal/shutter.
type Shutter interface {
	Open(ctx context.Context) error
	Close(ctx context.Context) error
}

// LED is what the appliance needs of hal/led.
type LED interface {
	Set(led.State) error
}

// Conference joins meetings. media/ implements it (the simulated local sink,
// WHIP, LiveKit). It must obey the *gate.Gate it was built with: no frame
// reaches an encoder unless the gate admits it.
type Conference interface {
	Join(ctx context.Context) (Call, error)
}

// Call is one joined meeting.
type Call interface {
	// ID is a pseudonymous meeting id, safe for events and logs.
	ID() string
	// Leave hangs up and releases the session at the server.
	Leave(ctx context.Context) error
	// Ended yields one value if the call ends by itself (server gone,
	// network lost for longer than the grace time), and is closed once the
	// call is over either way, so a watcher never outlives the call.
	Ended() <-chan error
}

// Encrypted is a Call that says whether it is encrypted end to end (the
// far end decrypts; the media server carries only ciphertext) and, if so,
// the safety code both sides can compare (media/e2ee.SafetyCode). A Call
// without it is encrypted hop by hop only.
type Encrypted interface {
	E2EE() bool
	SafetyCode() string
}

// DecryptCounter is an end-to-end encrypted Call that counts the far-end
// frames it dropped because they did not decrypt (a far end with the
// wrong key, or a tampered stream).
type DecryptCounter interface {
	E2EEDecryptFailures() uint64
}

// callE2EE is what a call says of its end-to-end encryption.
func callE2EE(c Call) (on bool, code string) {
	if e, ok := c.(Encrypted); ok && e.E2EE() {
		return true, e.SafetyCode()
	}
	return false, ""
}

// Config wires a Machine.
type Config struct {
	Gate          *gate.Gate
	Shutter       Shutter
	ShutterFaults <-chan shutter.Fault // may be nil
	LED           LED
	Conference    Conference
	JoinTimeout   time.Duration // default 20s
	LeaveTimeout  time.Duration // default 5s
	MaxCallLength time.Duration // 0 = no limit
	// AloneGrace: leave this long after the last far-end participant left
	// (connectors that report presence; 0 = stay).
	AloneGrace time.Duration
	// ResetHold is how long PRIVACY and JOIN must be held together for a
	// factory reset (0: no reset by buttons). The last ResetFinal of it
	// shows the fast countdown (default 3 s, capped at half the hold).
	ResetHold, ResetFinal time.Duration
	// FactoryReset wipes the unit and restarts it; called once, in its own
	// goroutine, when a hold completes (the gate is shut and the LED shows
	// the reset by then).
	FactoryReset func()
	// CallLock, if set, is held from the start of each join until that
	// call is over (nil: no lock).
	CallLock CallLock
	Logger   *slog.Logger
	Now      func() time.Time
}

// CallLock keeps the unit from being restarted under a call. The root
// update helper takes it before an update's reboot: a join that starts
// first defers the reboot, and one that starts after it is refused with
// ErrRestarting (appliance/agent.RebootLock).
type CallLock interface {
	// Acquire returns once the lock is held, with the function that
	// releases it, or an error: ErrRestarting when the unit is about to
	// restart.
	Acquire(ctx context.Context) (release func(), err error)
}

// JoinWith adapts a connector whose Join returns its own call type.
func JoinWith[C Call](join func(context.Context) (C, error)) Conference {
	return joinFunc[C](join)
}

type joinFunc[C Call] func(context.Context) (C, error)

func (f joinFunc[C]) Join(ctx context.Context) (Call, error) {
	c, err := f(ctx)
	if err != nil {
		return nil, err // not a typed nil inside a non-nil Call
	}
	return c, nil
}

// Machine runs the unit. Create with New, start with Run.
type Machine struct {
	cfg  Config
	log  *slog.Logger
	in   chan any
	core *core

	shutterReq chan effShutter

	identifySeq atomic.Uint64

	joinCancel  context.CancelFunc
	joinAttempt uint64
	joins       sync.WaitGroup // join attempts still running
	maxTimer    *time.Timer
	timedCall   Call
	aloneTimer  *time.Timer

	mu     sync.Mutex
	status Status
	seq    uint64
	subs   map[chan Event]struct{}
	ready  chan struct{}
	// settled are closed at the next Idle or Fault snapshot (Settled).
	settled []chan struct{}
}

// Status is a snapshot for roomctl and the local API.
type Status struct {
	State   State      `json:"state"`
	Since   time.Time  `json:"since"`
	Gate    gate.State `json:"gate"`
	LED     string     `json:"led"`
	Privacy bool       `json:"privacy"`
	Mute    bool       `json:"mute"`
	Shutter string     `json:"shutter"` // closed, closing, opening, open, unconfirmed
	Meeting string     `json:"meeting,omitempty"`
	// E2EE says, during a call, whether it is encrypted end to end
	// (absent without a call); SafetyCode is then the code the unit's
	// screen shows, never the key or anything else derived from it.
	E2EE       *bool    `json:"e2ee,omitempty"`
	SafetyCode string   `json:"safety_code,omitempty"`
	Faults     []string `json:"faults,omitempty"`
	LastError  string   `json:"last_error,omitempty"`
	// Notice is why the last JOIN entered nothing without a fault: "no
	// consultation now" (ErrNothingDue); cleared by the next JOIN or LEAVE.
	Notice string `json:"notice,omitempty"`
}

// New builds a Machine. Nothing moves until Run.
func New(cfg Config) *Machine {
	if cfg.JoinTimeout == 0 {
		cfg.JoinTimeout = 20 * time.Second
	}
	if cfg.LeaveTimeout == 0 {
		cfg.LeaveTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ResetFinal <= 0 || cfg.ResetFinal > cfg.ResetHold/2 {
		cfg.ResetFinal = min(3*time.Second, cfg.ResetHold/2)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Machine{
		cfg:        cfg,
		log:        cfg.Logger,
		in:         make(chan any, 64),
		core:       newCore(cfg.Now),
		shutterReq: make(chan effShutter, 1),
		subs:       map[chan Event]struct{}{},
		ready:      make(chan struct{}),
	}
	m.snapshot()
	return m
}

// Do asks for an action, as a button or command would. It never blocks for
// long: the machine decides in its own goroutine.
func (m *Machine) Do(ctx context.Context, a Action, source string) error {
	m.publish(Event{Type: "action", Detail: string(a), Reason: source})
	return m.post(ctx, inAction{act: a, source: source})
}

// Button maps a debounced button event to an action. Actions fire on the
// press (Down), not the release, so the gate reacts within a debounce time.
func (m *Machine) Button(ctx context.Context, ev button.Event) error {
	m.publish(Event{Type: "button", Detail: ev.Button + ":" + ev.Kind.String()})
	if ev.Kind == button.Down {
		if a, ok := map[string]Action{"join": ActJoin, "leave": ActLeave, "privacy": ActPrivacy, "mute": ActMute}[ev.Button]; ok {
			if err := m.post(ctx, inAction{act: a, source: "button:" + ev.Button}); err != nil {
				return err
			}
		}
	}
	// After the press's own action, so a reset hold has the last word
	// (privacy on, no call) whatever order the two buttons went down in.
	if m.cfg.ResetHold > 0 && (ev.Kind == button.Down || ev.Kind == button.Up) {
		return m.post(ctx, inHeld{button: ev.Button, down: ev.Kind == button.Down})
	}
	return nil
}

// Identify blinks the LED in the identify pattern for d, so an installer can
// find the unit the fleet means. It shows only while the unit is idle: LIVE,
// a call or a fault always win (the LED stays derived in core.settle). A
// second Identify replaces the first; d <= 0 stops it.
func (m *Machine) Identify(ctx context.Context, d time.Duration) error {
	seq := m.identifySeq.Add(1)
	if err := m.post(ctx, inIdentify{seq: seq, on: d > 0}); err != nil {
		return fmt.Errorf("identify: %w", err)
	}
	if d > 0 {
		time.AfterFunc(d, func() {
			// Bounded: a machine that has stopped must not pin this goroutine.
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = m.post(ctx, inIdentify{seq: seq})
		})
	}
	return nil
}

// ConsultationDue says whether a consultation is due now (JOIN would enter
// it). While idle the LED then shows that it is time to press JOIN; it
// never hides LIVE, a call, a fault or an identify.
func (m *Machine) ConsultationDue(ctx context.Context, on bool) error {
	if err := m.post(ctx, inDue{on: on}); err != nil {
		return fmt.Errorf("consultation due: %w", err)
	}
	return nil
}

// DeviceLost reports that the camera or microphone disappeared (cleared=false)
// or came back (cleared=true).
func (m *Machine) DeviceLost(ctx context.Context, device, detail string, cleared bool) error {
	return m.post(ctx, inMediaFault{device: device, detail: detail, cleared: cleared})
}

func (m *Machine) post(ctx context.Context, in any) error {
	select {
	case m.in <- in:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Ready is closed once Run has closed the shutter and is taking events.
func (m *Machine) Ready() <-chan struct{} { return m.ready }

// Run decides until ctx ends, then fails closed: gate shut, call left,
// shutter closed, LED off. The error reports a shutter that did not confirm
// closed on the way out.
func (m *Machine) Run(ctx context.Context) error {
	workerCtx, stopWorker := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); m.shutterWorker(workerCtx) }()
	if m.cfg.ShutterFaults != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case f, ok := <-m.cfg.ShutterFaults:
					if !ok {
						return
					}
					_ = m.post(workerCtx, inShutterFault{kind: faultName(f.Kind), detail: f.Detail, cleared: f.Cleared})
				case <-workerCtx.Done():
					return
				}
			}
		}()
	}

	// Start from a known state: gate shut, LED off, shutter commanded closed.
	m.cfg.Gate.Set(gate.State{})
	m.setLED(ledOff)
	m.core.shutterSeq++
	m.core.shutterConfirmed = false
	m.requestShutter(effShutter{seq: m.core.shutterSeq, open: false})
	m.snapshot()
	close(m.ready)

	for {
		select {
		case in := <-m.in:
			if p, ok := in.(inPing); ok {
				close(p.done)
				continue
			}
			effs := m.core.handle(in)
			// Status first: a watcher that reads it on an event (roomctl
			// watch, then status) must see at least that event's state,
			// not the one before it.
			m.snapshot()
			m.apply(effs)
			m.snapshot()
		case <-ctx.Done():
			err := m.failClosed()
			stopWorker()
			wg.Wait()
			return err
		}
	}
}

func faultName(k shutter.FaultKind) string {
	switch k {
	case shutter.Timeout:
		return "timeout"
	case shutter.SensorsDisagree:
		return "sensors_disagree"
	case shutter.MovedByItself:
		return "moved_by_itself"
	}
	return fmt.Sprintf("fault-%d", k)
}

func (m *Machine) apply(effs []any) {
	// The gate first, whatever order the core listed things in: nothing else
	// (a hang-up, a shutter move) may happen while it is still open.
	for _, e := range effs {
		if g, ok := e.(effGate); ok {
			// Synchronous: returns once no frame of a closed kind is in an encoder.
			m.cfg.Gate.Set(g.state)
		}
	}
	for _, e := range effs {
		switch e := e.(type) {
		case effShutter:
			m.requestShutter(e)
		case effLED:
			m.setLED(e.state)
		case effJoin:
			m.startJoin(e.attempt)
		case effLeave:
			go m.leave(e.call)
		case effEvent:
			m.publish(e.ev)
		case effResetTimer:
			d := m.cfg.ResetHold - m.cfg.ResetFinal
			if e.final {
				d = m.cfg.ResetFinal
			}
			time.AfterFunc(d, func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_ = m.post(ctx, inResetTick(e))
			})
		case effFactoryReset:
			if m.cfg.FactoryReset != nil {
				go m.cfg.FactoryReset()
			}
		}
	}
	m.armMaxLength()
	m.armAlone()
	// A join the core no longer waits for is cancelled at once.
	if m.joinCancel != nil && m.core.attempt != m.joinAttempt {
		m.joinCancel()
		m.joinCancel = nil
	}
}

// armMaxLength starts the call-length timer when a call is up, and stops it
// when the call is gone.
func (m *Machine) armMaxLength() {
	call := m.core.call
	if call == m.timedCall {
		return
	}
	if m.maxTimer != nil {
		m.maxTimer.Stop()
		m.maxTimer = nil
	}
	m.timedCall = call
	if call == nil || m.cfg.MaxCallLength <= 0 {
		return
	}
	m.maxTimer = time.AfterFunc(m.cfg.MaxCallLength, func() {
		_ = m.post(context.Background(), inMaxLength{call: call})
	})
}

// armAlone starts the grace timer when the far end has emptied, and stops
// it when someone is back or the call is gone.
func (m *Machine) armAlone() {
	alone := m.core.call != nil && m.core.hadFar && m.core.others == 0 && m.cfg.AloneGrace > 0
	if !alone {
		if m.aloneTimer != nil {
			m.aloneTimer.Stop()
			m.aloneTimer = nil
		}
		return
	}
	if m.aloneTimer != nil {
		return
	}
	call := m.core.call
	m.aloneTimer = time.AfterFunc(m.cfg.AloneGrace, func() {
		_ = m.post(context.Background(), inAlone{call: call})
	})
}

// presenceOf is a call that tells who is at the far end.
type presenceOf interface {
	Presence() <-chan media.Presence
}

// pumpPresence hands the call's presence reports to the core until stop
// is closed (the call is over).
func (m *Machine) pumpPresence(call Call, stop <-chan struct{}) {
	pc, ok := call.(presenceOf)
	if !ok {
		return
	}
	go func() {
		for {
			select {
			case p := <-pc.Presence():
				_ = m.post(context.Background(), inPresence{call: call, p: p})
			case <-stop:
				return
			}
		}
	}()
}

func (m *Machine) setLED(s led.State) {
	if err := m.cfg.LED.Set(s); err != nil {
		m.log.Error("set LED", "pattern", LEDName(s), "err", err)
	}
}

func (m *Machine) requestShutter(r effShutter) {
	select { // only the loop sends, so replacing the pending request is safe
	case <-m.shutterReq:
	default:
	}
	m.shutterReq <- r
}

// shutterWorker moves the shutter one request at a time; a newer request
// cancels a move in progress (a close never waits behind an open).
func (m *Machine) shutterWorker(ctx context.Context) {
	var req effShutter
	have := false
	for {
		if !have {
			select {
			case req = <-m.shutterReq:
			case <-ctx.Done():
				return
			}
		}
		have = false
		moveCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func(r effShutter) {
			if r.open {
				done <- m.cfg.Shutter.Open(moveCtx)
			} else {
				done <- m.cfg.Shutter.Close(moveCtx)
			}
		}(req)
		select {
		case err := <-done:
			cancel()
			_ = m.post(ctx, inShutterDone{seq: req.seq, open: req.open, err: err})
		case next := <-m.shutterReq:
			cancel()
			<-done
			req, have = next, true
		case <-ctx.Done():
			cancel()
			<-done
			return
		}
	}
}

func (m *Machine) startJoin(attempt uint64) {
	if m.joinCancel != nil {
		m.joinCancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.JoinTimeout)
	m.joinCancel, m.joinAttempt = cancel, attempt
	m.joins.Add(1)
	go func() {
		defer m.joins.Done()
		defer cancel()
		if m.cfg.CallLock != nil {
			release, err := m.cfg.CallLock.Acquire(ctx)
			if err != nil {
				_ = m.post(context.Background(), inJoinDone{attempt: attempt, err: err})
				return
			}
			// Held until this goroutine ends: the join failed, was given
			// up, or its call is over (Ended yielded or was closed).
			defer release()
		}
		call, err := m.cfg.Conference.Join(ctx)
		if err == nil && call != nil && ctx.Err() != nil {
			// Connected just as the join was given up (LEAVE, shutdown):
			// hang up here, nobody is waiting for this call any more.
			lctx, lcancel := context.WithTimeout(context.Background(), m.cfg.LeaveTimeout)
			_ = call.Leave(lctx)
			lcancel()
			return
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer from the conference server within %s: check the server address and the network", m.cfg.JoinTimeout)
		}
		_ = m.post(context.Background(), inJoinDone{attempt: attempt, call: call, err: err})
		if err == nil && call != nil {
			stop := make(chan struct{})
			m.pumpPresence(call, stop)
			end, ok := <-call.Ended()
			close(stop)
			if ok {
				_ = m.post(context.Background(), inCallEnded{call: call, err: end})
			}
		}
	}()
}

// leave hangs up. A connector that does not return within LeaveTimeout is
// reported as such and the unit moves on: the gate is already shut and the
// shutter closing, so nothing leaves the room meanwhile.
func (m *Machine) leave(c Call) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.LeaveTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Leave(ctx) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(m.cfg.LeaveTimeout + time.Second):
		err = fmt.Errorf("no answer within %s", m.cfg.LeaveTimeout)
	}
	if err != nil {
		err = fmt.Errorf("leave meeting %s: %w", c.ID(), err)
	}
	_ = m.post(context.Background(), inLeaveDone{call: c, err: err})
}

// failClosed is the shutdown path: invariant 4.
func (m *Machine) failClosed() error {
	m.cfg.Gate.Set(gate.State{})
	if m.maxTimer != nil {
		m.maxTimer.Stop()
	}
	if m.aloneTimer != nil {
		m.aloneTimer.Stop()
	}
	if m.joinCancel != nil {
		m.joinCancel()
	}
	left := make(chan struct{})
	if c := m.core.call; c != nil {
		go func() {
			defer close(left)
			ctx, cancel := context.WithTimeout(context.Background(), m.cfg.LeaveTimeout)
			defer cancel()
			if err := c.Leave(ctx); err != nil {
				m.log.Warn("leave on shutdown", "meeting", c.ID(), "err", err)
			}
		}()
	} else {
		close(left)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := m.cfg.Shutter.Close(ctx)
	select { // a connector that ignores its context must not stop the shutdown
	case <-left:
	case <-time.After(m.cfg.LeaveTimeout):
		m.log.Warn("leave on shutdown did not finish in time; exiting anyway", "timeout", m.cfg.LeaveTimeout)
	}
	// A join given up above releases its camera and microphone on its way out.
	joined := make(chan struct{})
	go func() { m.joins.Wait(); close(joined) }()
	select {
	case <-joined:
	case <-time.After(m.cfg.LeaveTimeout):
		m.log.Warn("a join attempt did not finish in time; exiting anyway", "timeout", m.cfg.LeaveTimeout)
	}
	m.setLED(ledOff)
	m.core.state, m.core.gate, m.core.led, m.core.call = Idle, gate.State{}, ledOff, nil
	m.core.shutterTargetOpen, m.core.shutterConfirmed = false, err == nil
	m.snapshot()
	if err != nil {
		return fmt.Errorf("close shutter on shutdown: %w", err)
	}
	return nil
}

func (m *Machine) snapshot() {
	c := m.core
	s := Status{
		State:     c.state,
		Gate:      c.gate,
		LED:       LEDName(c.led),
		Privacy:   c.privacy,
		Mute:      c.mute,
		LastError: c.callErr,
		Notice:    c.notice,
	}
	switch {
	case c.shutterTargetOpen && c.shutterConfirmed:
		s.Shutter = "open"
	case c.shutterTargetOpen:
		s.Shutter = "opening"
	case c.shutterConfirmed:
		s.Shutter = "closed"
	default:
		s.Shutter = "closing"
	}
	if c.call != nil {
		s.Meeting = c.call.ID()
		on, code := callE2EE(c.call)
		s.E2EE, s.SafetyCode = &on, code
	}
	for _, v := range c.hwFaults {
		s.Faults = append(s.Faults, "shutter: "+v)
	}
	for k, v := range c.mediaFaults {
		s.Faults = append(s.Faults, k+": "+v)
	}
	sort.Strings(s.Faults)
	m.mu.Lock()
	if m.status.State != s.State || m.status.Since.IsZero() {
		s.Since = m.cfg.Now()
	} else {
		s.Since = m.status.Since
	}
	m.status = s
	if s.State == Idle || s.State == Fault {
		for _, ch := range m.settled {
			close(ch)
		}
		m.settled = nil
	}
	m.mu.Unlock()
}

// Status returns the latest snapshot.
func (m *Machine) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}
