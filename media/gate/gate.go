// Package gate is the privacy gate: the one switch, set by the appliance,
// that every media path checks before a camera frame or a microphone chunk
// may reach an encoder.
//
// The gate is not a filter after the encoder: a pipeline asks Enter before
// it hands a raw frame to the encoder and calls the returned release when
// the encoder is done with it. Set waits for every such frame in flight, so
// when Set returns with a kind closed, nothing of that kind is being encoded
// and nothing more will be until the gate opens again.
package gate

import (
	"sync"
)

// Kind is a media kind the gate controls.
type Kind int

const (
	Video Kind = iota
	Audio
)

func (k Kind) String() string {
	if k == Video {
		return "video"
	}
	return "audio"
}

// State says which kinds may leave the unit.
type State struct {
	Video bool `json:"video"`
	Audio bool `json:"audio"`
}

// Live reports whether anything may leave: exactly when the LED must say LIVE.
func (s State) Live() bool { return s.Video || s.Audio }

func (s State) allows(k Kind) bool {
	if k == Video {
		return s.Video
	}
	return s.Audio
}

// Gate starts closed. The zero value is not usable; call New.
type Gate struct {
	// One RWMutex per kind: pipelines hold a read lock while a frame is in
	// the encoder, Set takes the write lock, so closing waits for frames
	// already admitted and admits no more.
	locks [2]sync.RWMutex

	mu      sync.Mutex
	state   State
	changed chan struct{} // closed and replaced on every change
}

// New returns a closed gate.
func New() *Gate {
	return &Gate{changed: make(chan struct{})}
}

// Set changes the gate. Closing a kind returns only after every frame of
// that kind admitted by Enter has been released.
func (g *Gate) Set(s State) {
	// Lock both kinds in a fixed order so a concurrent Set cannot deadlock.
	for i := range g.locks {
		g.locks[i].Lock()
	}
	g.mu.Lock()
	if g.state != s {
		g.state = s
		close(g.changed)
		g.changed = make(chan struct{})
	}
	g.mu.Unlock()
	for i := range g.locks {
		g.locks[i].Unlock()
	}
}

// State returns the current state.
func (g *Gate) State() State {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state
}

// Changed returns a channel that is closed at the next change of state, so a
// pipeline whose gate is shut can sleep instead of polling.
func (g *Gate) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// Enter admits one frame of kind k to the encoder if the gate allows it. If
// ok, the caller must call release once the encoder has finished with the
// frame; until then a Set that closes k waits.
func (g *Gate) Enter(k Kind) (release func(), ok bool) {
	l := &g.locks[k]
	l.RLock()
	g.mu.Lock()
	allowed := g.state.allows(k)
	g.mu.Unlock()
	if !allowed {
		l.RUnlock()
		return nil, false
	}
	return l.RUnlock, true
}
