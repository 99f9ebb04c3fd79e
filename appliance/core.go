package appliance

import (
	"errors"
	"fmt"
	"time"

	"github.com/konsult/konsult/hal/led"
	"github.com/konsult/konsult/hal/shutter"
	"github.com/konsult/konsult/media"
	"github.com/konsult/konsult/media/gate"
)

// State is the unit's call state.
type State string

const (
	Idle    State = "idle"
	Joining State = "joining"
	InCall  State = "in_call"
	Leaving State = "leaving"
	Fault   State = "fault"
)

// Action is what a button or a command asks for.
type Action string

const (
	ActJoin       Action = "join"  // join; in a call it hangs up (the JOIN button toggles)
	ActLeave      Action = "leave" // hang up; in Fault it acknowledges a call error
	ActPrivacy    Action = "privacy"
	ActPrivacyOn  Action = "privacy_on"
	ActPrivacyOff Action = "privacy_off"
	ActMute       Action = "mute"
	ActMuteOn     Action = "mute_on"
	ActMuteOff    Action = "mute_off"
)

// ParseAction accepts the names above.
func ParseAction(s string) (Action, error) {
	switch a := Action(s); a {
	case ActJoin, ActLeave, ActPrivacy, ActPrivacyOn, ActPrivacyOff, ActMute, ActMuteOn, ActMuteOff:
		return a, nil
	}
	return "", fmt.Errorf("unknown action %q: use one of join, leave, privacy, privacy_on, privacy_off, mute, mute_on, mute_off", s)
}

// Inputs to the core. Everything the unit learns arrives as one of these.
type (
	inAction struct {
		act    Action
		source string // "button:join", "api", "fleet"
	}
	// inShutterDone reports a finished move; seq matches effShutter.seq.
	inShutterDone struct {
		seq  uint64
		open bool
		err  error
	}
	inShutterFault struct {
		kind    string
		detail  string
		cleared bool
	}
	inJoinDone struct {
		attempt uint64
		call    Call
		err     error
	}
	inLeaveDone struct {
		call Call
		err  error
	}
	inCallEnded struct {
		call Call
		err  error
	}
	// inMaxLength: the call has lasted the configured maximum.
	inMaxLength struct{ call Call }
	// inPresence: someone at the far end joined or left the call.
	inPresence struct {
		call Call
		p    media.Presence
	}
	// inAlone: the call has had nobody at the far end for the grace time.
	inAlone struct{ call Call }
	// inHeld: a button went down or up (factory-reset hold).
	inHeld struct {
		button string
		down   bool
	}
	// inResetTick: a factory-reset countdown timer fired; seq matches the
	// hold it was armed for.
	inResetTick struct {
		seq   uint64
		final bool
	}
	inMediaFault struct { // camera or mic lost; cleared when it returns
		device  string
		detail  string
		cleared bool
	}
	// inIdentify starts (on) or ends the identify blink; an end only counts
	// for the identify it was scheduled for (seq), so a second identify is
	// not cut short by the first one's timer.
	inIdentify struct {
		seq uint64
		on  bool
	}
	// inDue says whether a consultation is due now (JOIN would enter it).
	inDue struct{ on bool }
)

// Effects the core asks the loop to carry out, in order.
type (
	effGate    struct{ state gate.State }
	effShutter struct {
		seq  uint64
		open bool
	}
	effJoin  struct{ attempt uint64 }
	effLeave struct{ call Call }
	effLED   struct{ state led.State }
	effEvent struct{ ev Event }
	// effResetTimer arms the next step of a factory-reset countdown.
	effResetTimer struct {
		seq   uint64
		final bool
	}
	// effFactoryReset: the hold completed; wipe and restart.
	effFactoryReset struct{}
)

// LED patterns. Derived from the gate and the state, never set on their own.
var (
	ledOff     = led.State{Pattern: led.Off}
	ledLive    = led.State{Pattern: led.Solid, Color: led.Red}
	ledPrivate = led.State{Pattern: led.Pulse, Color: led.Amber} // in a call, nothing leaving
	// ledOccupied: in a call, nothing leaving, and someone is at the far end
	// (they see the slate): the room knows it is not alone before it opens up.
	ledOccupied = led.State{Pattern: led.SlowBlink, Color: led.Amber}
	ledBusy     = led.State{Pattern: led.SlowBlink, Color: led.White}
	ledFault    = led.State{Pattern: led.FastBlink, Color: led.Red}
	// ledIdentify lets an installer find the unit the fleet asked about. On
	// an RGB LED blue tells it apart from busy (white); a single LED blinks
	// slowly, which while idle means nothing else.
	ledIdentify = led.State{Pattern: led.SlowBlink, Color: led.Blue}
	// ledDue: idle, and a consultation is due (from its lead before the
	// start until its end): press JOIN. A short green flash every 2 s is
	// unlike every other pattern, on a single LED too, so it cannot be
	// taken for LIVE, a call, a fault or a reset.
	ledDue = led.State{Pattern: led.Beacon, Color: led.Green}
	// Factory reset (PRIVACY + JOIN held): slow green while counting, fast
	// green for the last seconds, solid green while wiping. Green means
	// nothing else, so a countdown cannot be mistaken for LIVE or busy.
	ledResetHold  = led.State{Pattern: led.SlowBlink, Color: led.Green}
	ledResetFinal = led.State{Pattern: led.FastBlink, Color: led.Green}
	ledResetting  = led.State{Pattern: led.Solid, Color: led.Green}
)

// ResetButtons are held together for a factory reset.
var ResetButtons = [2]string{"privacy", "join"}

// LEDName names a pattern for status and events.
func LEDName(s led.State) string {
	switch s {
	case ledOff:
		return "off"
	case ledLive:
		return "live"
	case ledPrivate:
		return "in_call_private"
	case ledOccupied:
		return "in_call_occupied"
	case ledBusy:
		return "busy"
	case ledFault:
		return "fault"
	case ledIdentify:
		return "identify"
	case ledDue:
		return "consultation_due"
	case ledResetHold:
		return "factory_reset_countdown"
	case ledResetFinal:
		return "factory_reset_final"
	case ledResetting:
		return "factory_reset"
	}
	return fmt.Sprintf("pattern-%d-color-%d", s.Pattern, s.Color)
}

// core is the decision logic, free of goroutines and I/O so it can be driven
// through thousands of random event sequences in tests. The Machine owns one
// and is the only caller.
type core struct {
	now func() time.Time

	state   State
	privacy bool
	mute    bool

	// Shutter: the target the core last commanded, and whether the sensors
	// confirmed that target. Video needs target open AND confirmed.
	shutterSeq        uint64
	shutterTargetOpen bool
	shutterConfirmed  bool

	hwFaults    map[string]string // shutter faults by kind
	mediaFaults map[string]string // lost devices
	callErr     string            // sticky until JOIN or LEAVE
	notice      string            // ErrNothingDue's text until the next JOIN or LEAVE

	attempt uint64 // current join attempt; 0 = none pending
	joined  bool   // the conference said we are in
	call    Call
	leaving int // leaves in flight
	others  int // far-end participants in the call (connectors that report presence)
	hadFar  bool

	identify    bool // the fleet asked the unit to show itself
	due         bool // a consultation is due: JOIN would enter it
	identifySeq uint64

	// Factory reset: buttons held down, the running hold (0 = none), its
	// last seconds, and a reset under way.
	held       map[string]bool
	resetSeq   uint64
	resetOn    bool
	resetFinal bool
	resetting  bool

	gate gate.State
	led  led.State
	effs []any
}

func newCore(now func() time.Time) *core {
	return &core{
		now:              now,
		state:            Idle,
		hwFaults:         map[string]string{},
		mediaFaults:      map[string]string{},
		held:             map[string]bool{},
		shutterConfirmed: true, // starts commanded closed; the first close confirms
		led:              ledOff,
	}
}

func (c *core) emit(e Event) {
	e.At = c.now()
	c.effs = append(c.effs, effEvent{e})
}

// handle decides on one input and returns the effects in the order they must
// happen. The gate effect, when there is one, always comes before any
// shutter-close effect, so the gate is shut before the shutter moves.
func (c *core) handle(in any) []any {
	c.effs = c.effs[:0]
	prev := c.state
	switch in := in.(type) {
	case inAction:
		c.onAction(in)
	case inShutterDone:
		c.onShutterDone(in)
	case inShutterFault:
		c.onShutterFault(in)
	case inMediaFault:
		c.onMediaFault(in)
	case inDue:
		c.due = in.on
	case inIdentify:
		if in.on {
			c.identify, c.identifySeq = true, in.seq
		} else if in.seq == c.identifySeq {
			c.identify = false
		}
	case inJoinDone:
		c.onJoinDone(in)
	case inLeaveDone:
		c.leaving--
		if in.err != nil {
			c.emit(Event{Type: "call", Detail: "leave", Reason: in.err.Error()})
		}
	case inMaxLength:
		if in.call != nil && in.call == c.call {
			c.leave("the maximum call length was reached")
		}
	case inPresence:
		if in.call != nil && in.call == c.call {
			c.others = in.p.Others
			c.hadFar = c.hadFar || in.p.Joined
			c.emit(Event{Type: "participant", Detail: map[bool]string{true: "joined", false: "left"}[in.p.Joined],
				Meeting: in.call.ID(), Participant: in.p.Participant})
		}
	case inHeld:
		c.onHeld(in)
	case inResetTick:
		if c.resetOn && in.seq == c.resetSeq {
			if !in.final {
				c.resetFinal = true
				c.effs = append(c.effs, effResetTimer{seq: c.resetSeq, final: true})
			} else {
				c.resetOn, c.resetting = false, true
				c.emit(Event{Type: "factory_reset", Detail: "wiping"})
				c.effs = append(c.effs, effFactoryReset{})
			}
		}
	case inAlone:
		if in.call != nil && in.call == c.call && c.others == 0 {
			c.leave("the last far-end participant left")
		}
	case inCallEnded:
		if in.call != nil && in.call == c.call {
			reason := "the conference ended the call"
			if in.err != nil {
				reason = in.err.Error()
			}
			c.failCall(reason)
		}
	}
	c.settle()
	if c.state != prev {
		c.emit(Event{Type: "state", State: c.state})
	}
	out := make([]any, len(c.effs))
	copy(out, c.effs)
	return out
}

func (c *core) onAction(in inAction) {
	if c.resetOn || c.resetting {
		// The countdown's LED must not hide LIVE: nothing may open up
		// while the installer holds the buttons or the unit is wiping.
		c.emit(Event{Type: "action_ignored", Detail: string(in.act), Reason: "factory reset in progress"})
		return
	}
	if in.act == ActJoin || in.act == ActLeave {
		c.notice = ""
	}
	switch in.act {
	case ActJoin:
		switch c.state {
		case Idle:
			c.startJoin()
		case Fault:
			if len(c.hwFaults) == 0 && len(c.mediaFaults) == 0 {
				c.callErr = ""
				c.startJoin()
			}
		case Joining, InCall:
			c.leave("hung up")
		}
	case ActLeave:
		switch c.state {
		case Joining, InCall:
			c.leave("hung up")
		case Fault:
			c.callErr = ""
		}
	case ActPrivacy:
		c.setPrivacy(!c.privacy)
	case ActPrivacyOn:
		c.setPrivacy(true)
	case ActPrivacyOff:
		c.setPrivacy(false)
	case ActMute:
		c.setMute(!c.mute)
	case ActMuteOn:
		c.setMute(true)
	case ActMuteOff:
		c.setMute(false)
	}
}

// onHeld starts a factory-reset countdown when both reset buttons are down,
// and cancels it when either comes up. The hold first makes the unit safe
// (any call left, privacy on), so the presses' own JOIN and PRIVACY actions
// cannot leave it live while the installer holds.
func (c *core) onHeld(in inHeld) {
	if in.button != ResetButtons[0] && in.button != ResetButtons[1] {
		return
	}
	c.held[in.button] = in.down
	both := c.held[ResetButtons[0]] && c.held[ResetButtons[1]]
	switch {
	case both && !c.resetOn && !c.resetting:
		c.resetOn, c.resetFinal = true, false
		c.resetSeq++
		if c.state == Joining || c.state == InCall {
			c.leave("factory reset hold")
		}
		c.setPrivacy(true)
		c.emit(Event{Type: "factory_reset", Detail: "countdown"})
		c.effs = append(c.effs, effResetTimer{seq: c.resetSeq})
	case !both && c.resetOn:
		c.resetOn, c.resetFinal = false, false
		c.emit(Event{Type: "factory_reset", Detail: "cancelled"})
	}
}

func (c *core) setPrivacy(on bool) {
	if c.privacy != on {
		// The audit log records each change (appliance/agent).
		c.emit(Event{Type: "privacy", Detail: onOff(on)})
	}
	c.privacy = on
	// settle() shuts the gate first, then moves the shutter to match.
}

func (c *core) setMute(on bool) {
	if c.mute != on {
		c.emit(Event{Type: "mute", Detail: onOff(on)})
	}
	c.mute = on
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

func (c *core) startJoin() {
	c.attempt++
	c.joined = false
	c.state = Joining
	c.effs = append(c.effs, effJoin{attempt: c.attempt})
}

// leave hangs up: the gate shuts (in settle, before the shutter moves), the
// conference is told, and the shutter closes.
func (c *core) leave(why string) {
	c.attempt = 0
	c.joined = false
	c.others, c.hadFar = 0, false
	if c.call != nil {
		c.effs = append(c.effs, effLeave{call: c.call})
		c.leaving++
		on, _ := callE2EE(c.call)
		ev := Event{Type: "call", Detail: "left", Meeting: c.call.ID(), Reason: why, E2EE: &on}
		if dc, ok := c.call.(DecryptCounter); ok && on {
			n := dc.E2EEDecryptFailures()
			ev.DecryptFailures = &n
		}
		c.emit(ev)
		c.call = nil
	}
	c.state = Leaving
}

func (c *core) failCall(reason string) {
	if c.state == Joining || c.state == InCall {
		c.leave(reason)
	}
	c.callErr = reason
	c.emit(Event{Type: "fault", Detail: "call", Reason: reason})
}

func (c *core) onJoinDone(in inJoinDone) {
	if in.attempt != c.attempt || c.state != Joining || c.joined {
		// A join that finished after the user gave up: hang it up at once.
		if in.err == nil && in.call != nil {
			c.effs = append(c.effs, effLeave{call: in.call})
			c.leaving++
		}
		return
	}
	if errors.Is(in.err, ErrNothingDue) {
		// The connector's wrapping ("join: conference token: …") says
		// nothing to the person at the screen.
		c.notice = ErrNothingDue.Error()
		c.leave(c.notice)
		c.emit(Event{Type: "call", Detail: "nothing_due", Reason: c.notice})
		return
	}
	if errors.Is(in.err, ErrRestarting) {
		c.notice = ErrRestarting.Error()
		c.leave(c.notice)
		c.emit(Event{Type: "call", Detail: "restarting", Reason: c.notice})
		return
	}
	if in.err != nil {
		c.failCall(fmt.Sprintf("join failed: %v", in.err))
		return
	}
	c.call = in.call
	c.joined = true
	on, _ := callE2EE(in.call)
	c.emit(Event{Type: "call", Detail: "joined", Meeting: in.call.ID(), E2EE: &on})
}

func (c *core) onShutterDone(in inShutterDone) {
	if in.seq != c.shutterSeq {
		return // superseded by a newer move
	}
	if in.err != nil {
		c.shutterConfirmed = false
		// Same keys as the shutter's own fault reports, so one problem is
		// one fault, cleared by whichever report comes first.
		key := "timeout"
		if errors.Is(in.err, shutter.ErrDisagree) {
			key = "sensors_disagree"
		}
		if _, known := c.hwFaults[key]; !known {
			c.hwFaults[key] = fmt.Sprintf("shutter did not %s: %v", openClose(in.open), in.err)
			c.emit(Event{Type: "fault", Detail: "shutter", Reason: c.hwFaults[key]})
		}
		return
	}
	c.shutterConfirmed = true
	c.emit(Event{Type: "shutter", Detail: map[bool]string{true: "opened", false: "closed"}[in.open]})
	if !in.open {
		// A confirmed close ends a failed move; the other faults clear when
		// the shutter reports them cleared.
		delete(c.hwFaults, "timeout")
	}
}

func openClose(open bool) string {
	if open {
		return "open"
	}
	return "close"
}

func (c *core) onShutterFault(in inShutterFault) {
	if in.cleared {
		if _, ok := c.hwFaults[in.kind]; ok {
			delete(c.hwFaults, in.kind)
			c.emit(Event{Type: "fault_cleared", Detail: "shutter", Reason: in.kind})
		}
		return
	}
	c.hwFaults[in.kind] = in.detail
	// The shutter is no longer where we think: nothing it says is confirmed.
	c.shutterConfirmed = false
	c.emit(Event{Type: "fault", Detail: "shutter", Reason: in.detail})
}

func (c *core) onMediaFault(in inMediaFault) {
	if in.cleared {
		if _, ok := c.mediaFaults[in.device]; ok {
			delete(c.mediaFaults, in.device)
			c.emit(Event{Type: "fault_cleared", Detail: in.device})
		}
		return
	}
	c.mediaFaults[in.device] = in.detail
	c.emit(Event{Type: "fault", Detail: in.device, Reason: in.detail})
}

// settle brings state, gate, shutter and LED in line after any change. It is
// the single place the privacy invariants are enforced.
func (c *core) settle() {
	hw := len(c.hwFaults) > 0 || len(c.mediaFaults) > 0
	if hw && (c.state == Joining || c.state == InCall) {
		c.leave("fault")
		c.callErr = ""
	}

	// Gate first: compute from the facts as they stand now.
	wantOpen := (c.state == Joining || c.state == InCall) && !c.privacy && !hw
	shutterOpen := c.shutterTargetOpen && c.shutterConfirmed
	if c.state == Joining && c.joined && (shutterOpen || !wantOpen) {
		c.state = InCall
	}
	g := gate.State{
		Video: c.state == InCall && shutterOpen && !c.privacy && !hw,
		Audio: c.state == InCall && !c.mute && !c.privacy && !hw,
	}
	if g != c.gate {
		c.gate = g
		c.effs = append(c.effs, effGate{state: g})
		c.emit(Event{Type: "gate", Gate: &g})
	}

	// Then the shutter, which only ever moves after the gate has shut.
	if wantOpen != c.shutterTargetOpen {
		c.shutterTargetOpen = wantOpen
		c.shutterConfirmed = false
		c.shutterSeq++
		c.effs = append(c.effs, effShutter{seq: c.shutterSeq, open: wantOpen})
		c.emit(Event{Type: "shutter", Detail: map[bool]string{true: "opening", false: "closing"}[wantOpen]})
	}

	if c.state == Leaving && c.leaving <= 0 && !c.shutterTargetOpen && c.shutterConfirmed {
		c.state = Idle
	}
	if c.state == Leaving && c.leaving <= 0 && !c.shutterTargetOpen && hw {
		c.state = Idle // settles to Fault below
	}
	if c.state == Idle && (hw || c.callErr != "") {
		c.state = Fault
	}
	if c.state == Fault && !hw && c.callErr == "" {
		c.state = Idle
	}

	var l led.State
	switch {
	case c.resetting:
		l = ledResetting
	case c.resetOn && c.resetFinal:
		l = ledResetFinal
	case c.resetOn:
		l = ledResetHold
	case c.state == Fault || hw || c.callErr != "":
		l = ledFault
	case g.Live():
		l = ledLive
	case c.state == InCall && c.others > 0:
		l = ledOccupied
	case c.state == InCall:
		l = ledPrivate
	case c.state == Joining || c.state == Leaving:
		l = ledBusy
	case c.identify && c.state == Idle:
		// Only while idle: identify never hides LIVE, a call or a fault.
		l = ledIdentify
	case c.due && c.state == Idle:
		l = ledDue
	default:
		l = ledOff
	}
	if l != c.led {
		c.led = l
		c.effs = append(c.effs, effLED{state: l})
		c.emit(Event{Type: "led", LED: LEDName(l)})
	}
}
