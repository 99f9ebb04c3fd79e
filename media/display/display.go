// Package display hands the far end's video, still encoded, to the unit's
// screen page, and the room's own outgoing picture (the self-view) beside
// it. Nothing is decoded in Go: the page's browser decodes, in hardware
// where the board has it.
//
// The hand-over is a loopback WebRTC peer connection from roomd to the page
// (docs/DESIGN.md, "The unit's screen", says why this and not WebCodecs over
// a WebSocket). The page offers a fixed pool of receive-only video sections
// (FarSlots for the far end, one for the self-view), so tiles come and go
// without renegotiation; the state feed (State, Changed) says which slot is
// which pseudonymous participant, who speaks, and whether the camera is out.
//
// A slot sends nothing to a page until a keyframe: a page that connects mid
// call asks the far end (FarEnd.Keyframe) and the encoder (SelfKeyframe) for
// one, and sees its tiles from then on, never a half-decoded picture.
//
// The self-view takes only what capture.Tap lets out: the encoder's output
// while the gate lets video out (invariant 9). While the camera is not out
// the page shows its placeholder, from the gate's own state, at once.
package display

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/playout"
)

// Bounds; docs/LIMITS.md lists them with the figures they were sized from.
const (
	// FarSlots is how many far-end pictures the screen shows at once: the
	// unit receives at most livekit.MaxRecvVideo (8) videos.
	FarSlots = 8
	// SelfSlot is the self-view's slot, after the far end's.
	SelfSlot = FarSlots
	// Slots is every slot of a page's peer connection.
	Slots = FarSlots + 1
	// MaxPages is how many screen pages are fed at once (the kiosk, and
	// one more while it reloads); a newer page replaces the oldest.
	MaxPages = 2
	// MaxFrameBytes bounds one frame handed to a page (playout's own cap).
	MaxFrameBytes = playout.MaxFrameBytes
	// QueueFrames and QueueBytes bound what waits for one page's writer;
	// past either a frame is dropped and its slot waits for a keyframe.
	QueueFrames = 64
	QueueBytes  = 8 << 20
	// IdleAfter frees a far-end slot whose video has stopped (the person
	// left or turned the camera off): the tile goes.
	IdleAfter = 2 * time.Second
	// keyframeEvery bounds how often one slot asks for a keyframe.
	keyframeEvery = 500 * time.Millisecond
)

// FarEnd is the call's far end as the display needs it; either func may be
// nil. livekit.RTCCall.RequestKeyframe and playout.Player.Speaking fit.
type FarEnd struct {
	Keyframe func(participant string) bool
	Speaking func() string // the pseudonym speaking now, or ""
}

// Config for New.
type Config struct {
	// Gate is the privacy gate the encoder is behind: the self-view shows
	// the room only while it lets video out.
	Gate *gate.Gate
	// SelfKeyframe asks the encoder for a keyframe (capture.Tap.RequestKeyframe).
	SelfKeyframe func()
	Log          *slog.Logger
}

// SlotState is one occupied slot.
type SlotState struct {
	Slot        int    `json:"slot"`
	Participant string `json:"participant,omitempty"` // pseudonym; "" for the self-view
	Codec       string `json:"codec,omitempty"`
	Width       int    `json:"width,omitempty"`
	Height      int    `json:"height,omitempty"`
	Speaking    bool   `json:"speaking,omitempty"`
}

// State is what the page is told: which slot shows whom.
type State struct {
	Seq       uint64      `json:"seq"`
	InCall    bool        `json:"in_call"`
	CameraOut bool        `json:"camera_out"`
	Far       []SlotState `json:"far"`
	Self      SlotState   `json:"self"`
	Speaking  string      `json:"speaking,omitempty"`
	Pages     int         `json:"pages"`
}

type farSlot struct {
	participant string
	codec       string
	w, h        int
	lastAt      time.Time
	askedAt     time.Time
}

// Display feeds the screen pages. Create with New; Close ends it.
type Display struct {
	cfg Config
	log *slog.Logger
	api *webrtc.API

	mu        sync.Mutex
	slots     [FarSlots]farSlot
	far       *FarEnd
	speaking  string
	pages     []*page
	seq       uint64
	changed   chan struct{}
	selfAt    time.Time
	selfCod   string
	selfAsked time.Time
	selfGen   <-chan struct{} // the gate's Changed as of the last self-view frame
	gate      *gate.Gate      // cfg.Gate, or the one SetGate gave
	gateSwap  chan struct{}   // closed when SetGate replaces the gate
	warned    map[string]bool // codecs not shown, logged once
	closed    bool
	stop      chan struct{}
	done      sync.WaitGroup
}

// New starts a display with no page yet.
func New(cfg Config) (*Display, error) {
	if cfg.Gate == nil {
		return nil, errors.New("display: a gate is needed (the self-view shows only what it lets out)")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	api, err := newAPI()
	if err != nil {
		return nil, fmt.Errorf("display: %w", err)
	}
	d := &Display{cfg: cfg, log: cfg.Log, api: api, changed: make(chan struct{}), stop: make(chan struct{}), warned: map[string]bool{},
		gate: cfg.Gate, gateSwap: make(chan struct{})}
	d.done.Add(2)
	go d.watchGate()
	go d.housekeep()
	return d, nil
}

// Close ends every page's connection.
func (d *Display) Close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	pages := d.pages
	d.pages = nil
	close(d.stop)
	d.mu.Unlock()
	for _, p := range pages {
		p.close()
	}
	d.done.Wait()
}

// SetGate moves the self-view to another gate: the unit re-opens its media
// (and so its gate) on a config change, while the screen and its page stay.
// Every page waits for a keyframe coded behind the new gate.
func (d *Display) SetGate(g *gate.Gate) {
	if g == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if g == d.gate {
		return
	}
	d.gate = g
	d.selfGen = nil
	close(d.gateSwap)
	d.gateSwap = make(chan struct{})
	for _, p := range d.pages {
		p.wantKey(SelfSlot)
	}
	d.bumpLocked()
}

func (d *Display) currentGate() (*gate.Gate, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gate, d.gateSwap
}

// SetFarEnd attaches a call (nil: the call is over, every far-end tile goes).
func (d *Display) SetFarEnd(f *FarEnd) {
	d.mu.Lock()
	d.far = f
	if f == nil {
		d.slots = [FarSlots]farSlot{}
		d.speaking = ""
	}
	d.bumpLocked()
	d.mu.Unlock()
}

// EndFarEnd detaches f if it is still the call attached: the end of one
// call, seen late, must not clear the next call's tiles.
func (d *Display) EndFarEnd(f *FarEnd) {
	d.mu.Lock()
	same := d.far == f
	d.mu.Unlock()
	if same {
		d.SetFarEnd(nil)
	}
}

// Left frees participant's slot at once (presence says they left).
func (d *Display) Left(participant string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.slots {
		if d.slots[i].participant == participant {
			d.slots[i] = farSlot{}
			d.bumpLocked()
		}
	}
}

// FarFrame takes one far-end frame (livekit.RTCOptions.OnVideoFrame). It
// does not block: the frame is queued for each page, or dropped.
func (d *Display) FarFrame(f playout.VideoFrame) {
	if len(f.Data) == 0 || len(f.Data) > MaxFrameBytes || f.Participant == "" {
		return
	}
	d.mu.Lock()
	if d.closed || d.far == nil {
		d.mu.Unlock()
		return
	}
	if _, ok := codecs[f.Codec]; !ok {
		if !d.warned[f.Codec] {
			d.warned[f.Codec] = true
			d.log.Warn("screen: far-end video in a codec the screen is not fed; not shown", "codec", f.Codec)
		}
		d.mu.Unlock()
		return
	}
	i := d.slotOfLocked(f.Participant)
	if i < 0 {
		d.mu.Unlock()
		return // more far-end videos than slots: shown once a slot frees
	}
	s := &d.slots[i]
	at := f.At
	if at.IsZero() {
		at = time.Now()
	}
	dur := frameDuration(s.lastAt, at)
	fresh := s.codec != f.Codec || (f.Width != 0 && (s.w != f.Width || s.h != f.Height))
	s.codec, s.lastAt = f.Codec, at
	if f.Width != 0 {
		s.w, s.h = f.Width, f.Height
	}
	if fresh {
		d.bumpLocked()
	}
	pages := d.pages
	d.mu.Unlock()
	fr := frame{slot: i, codec: f.Codec, data: f.Data, key: f.Keyframe, dur: dur}
	for _, p := range pages {
		p.enqueue(fr)
	}
}

// SelfFrame takes one frame of the room's own picture, as the encoder
// coded it (capture.Tap's sink): the gate was open when it left the
// encoder. It copies the frame.
func (d *Display) SelfFrame(f capture.EncodedFrame) {
	if _, ok := codecs[f.Codec]; !ok || len(f.Data) == 0 || len(f.Data) > MaxFrameBytes {
		return
	}
	d.mu.Lock()
	if d.closed || len(d.pages) == 0 {
		d.mu.Unlock()
		return
	}
	// Any change of the gate since the last frame (the watcher may not
	// have run yet): every page waits for a keyframe coded after it.
	rekey := false
	if ch := d.gate.Changed(); ch != d.selfGen {
		d.selfGen, rekey = ch, true
		for _, p := range d.pages {
			p.wantKey(SelfSlot)
		}
	}
	dur := frameDuration(d.selfAt, f.At)
	d.selfAt = f.At
	if d.selfCod != f.Codec {
		d.selfCod = f.Codec
		d.bumpLocked()
	}
	pages := d.pages
	d.mu.Unlock()
	if rekey && !f.Keyframe {
		d.keyframeFor(SelfSlot)
	}
	fr := frame{slot: SelfSlot, codec: f.Codec, data: append([]byte(nil), f.Data...), key: f.Keyframe, dur: dur}
	for _, p := range pages {
		p.enqueue(fr)
	}
}

func frameDuration(last, now time.Time) time.Duration {
	if last.IsZero() || now.IsZero() {
		return time.Second / 30
	}
	return min(max(now.Sub(last), time.Millisecond), 500*time.Millisecond)
}

// slotOfLocked is participant's slot, given one if free; -1 if none is.
func (d *Display) slotOfLocked(participant string) int {
	free := -1
	for i := range d.slots {
		if d.slots[i].participant == participant {
			return i
		}
		if free < 0 && d.slots[i].participant == "" {
			free = i
		}
	}
	if free >= 0 {
		d.slots[free] = farSlot{participant: participant}
		d.bumpLocked()
		// Every page needs this slot's first keyframe.
		for _, p := range d.pages {
			p.wantKey(free)
		}
		d.askKeyframeLocked(free, time.Now())
	}
	return free
}

// askKeyframeLocked asks the far end for a keyframe of slot i, at most
// every keyframeEvery.
func (d *Display) askKeyframeLocked(i int, now time.Time) {
	s := &d.slots[i]
	if s.participant == "" || d.far == nil || d.far.Keyframe == nil || now.Sub(s.askedAt) < keyframeEvery {
		return
	}
	s.askedAt = now
	go d.far.Keyframe(s.participant)
}

// keyframeFor is a page asking for slot i's keyframe (it connected, lost a
// frame, or its decoder sent a PLI).
func (d *Display) keyframeFor(i int) {
	d.mu.Lock()
	if i == SelfSlot {
		now := time.Now()
		ask := d.cfg.SelfKeyframe != nil && now.Sub(d.selfAsked) >= keyframeEvery
		if ask {
			d.selfAsked = now
		}
		d.mu.Unlock()
		if ask {
			d.cfg.SelfKeyframe()
		}
		return
	}
	d.askKeyframeLocked(i, time.Now())
	d.mu.Unlock()
}

func (d *Display) bumpLocked() {
	d.seq++
	close(d.changed)
	d.changed = make(chan struct{})
}

// Changed is closed at the next change of State.
func (d *Display) Changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changed
}

// State is the state feed's content now.
func (d *Display) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := State{Seq: d.seq, InCall: d.far != nil, CameraOut: d.gate.State().Video, Speaking: d.speaking, Pages: len(d.pages),
		Self: SlotState{Slot: SelfSlot, Codec: d.selfCod}, Far: []SlotState{}}
	for i, s := range d.slots {
		if s.participant == "" {
			continue
		}
		st.Far = append(st.Far, SlotState{Slot: i, Participant: s.participant, Codec: s.codec, Width: s.w, Height: s.h, Speaking: s.participant == d.speaking})
	}
	return st
}

// watchGate tells the page at once when the camera goes in or out: the
// placeholder must be up within a frame interval of PRIVACY. When the
// camera comes out again every page waits for the encoder's keyframe.
func (d *Display) watchGate() {
	defer d.done.Done()
	g, _ := d.currentGate()
	last := g.State().Video
	for {
		g, swapped := d.currentGate()
		ch := g.Changed()
		if v := g.State().Video; v != last {
			last = v
			d.mu.Lock()
			for _, p := range d.pages {
				p.wantKey(SelfSlot)
			}
			d.bumpLocked()
			d.mu.Unlock()
			if v && d.cfg.SelfKeyframe != nil {
				d.cfg.SelfKeyframe()
			}
		}
		select {
		case <-ch:
		case <-swapped:
		case <-d.stop:
			return
		}
	}
}

// housekeep frees slots whose video stopped and follows who speaks.
func (d *Display) housekeep() {
	defer d.done.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		d.mu.Lock()
		far := d.far
		d.mu.Unlock()
		var who string
		if far != nil && far.Speaking != nil {
			who = far.Speaking()
		}
		now := time.Now()
		d.mu.Lock()
		changed := false
		for i := range d.slots {
			if s := d.slots[i]; s.participant != "" && !s.lastAt.IsZero() && now.Sub(s.lastAt) > IdleAfter {
				d.slots[i] = farSlot{}
				changed = true
			}
		}
		if who != d.speaking {
			d.speaking = who
			changed = true
		}
		if changed {
			d.bumpLocked()
		}
		d.mu.Unlock()
	}
}
