package localapi

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/konsult/konsult/appliance"
)

// statusMarker stands for what a stranger must never read: it is in every
// status answer of fakeUnit.
const statusMarker = "room-7f3a-must-not-leak"

// fakeUnit is a Unit, Provisioner and Sim that records every call that could
// change the unit, so a test can say "the unit never got the join".
type fakeUnit struct {
	mu    sync.Mutex
	calls []string
	subs  map[chan appliance.Event]bool
}

// Publish sends ev to every open event stream.
func (f *fakeUnit) Publish(ev appliance.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

// Streams is how many event streams are open.
func (f *fakeUnit) Streams() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

func (f *fakeUnit) record(c string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
}

// Calls returns every state-changing call the unit got, in order.
func (f *fakeUnit) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeUnit) Status() any {
	state := "idle"
	for _, c := range f.Calls() {
		if c == "do join" {
			state = "joining"
		}
	}
	return map[string]any{"state": state, "room": statusMarker}
}

func (f *fakeUnit) Subscribe(buf int) (<-chan appliance.Event, func()) {
	ch := make(chan appliance.Event, buf)
	ch <- appliance.Event{Type: "hello", At: time.Now(), Detail: statusMarker}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.subs == nil {
		f.subs = map[chan appliance.Event]bool{}
	}
	f.subs[ch] = true
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.subs, ch)
	}
}

func (f *fakeUnit) Do(_ context.Context, a appliance.Action, source string) error {
	f.record("do " + string(a))
	return nil
}

func (f *fakeUnit) Doctor(context.Context) []Check {
	return []Check{{Name: "conference", OK: true, Detail: "room " + statusMarker}}
}

func (f *fakeUnit) Sim() Sim { return fakeSim{f} }

func (f *fakeUnit) Enrol(_ context.Context, code string) error {
	if code == "" {
		return errors.New("empty claim code")
	}
	f.record("enrol")
	return nil
}

func (f *fakeUnit) FactoryReset(context.Context) error {
	f.record("factory-reset")
	return nil
}

type fakeSim struct{ f *fakeUnit }

func (s fakeSim) Press(_ context.Context, button string, _ time.Duration) error {
	s.f.record("press " + button)
	return nil
}

func (s fakeSim) SetFault(fault string, on bool) error {
	s.f.record("fault " + fault)
	return nil
}
