package appliance

import (
	"context"
	"testing"
	"time"

	"github.com/konsult/konsult/media/gate"
)

// Settled is closed on an idle unit, stays open through a call and is
// closed by the hang-up, without the caller polling Status.
func TestSettledClosesWhenTheCallEnds(t *testing.T) {
	m := New(Config{Gate: gate.New(), Shutter: quietShutter{}, LED: quietLED{},
		Conference: JoinWith(func(context.Context) (Call, error) { return newFakeCall("m-1"), nil })})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { stop(); <-done }()
	<-m.Ready()
	select {
	case <-m.Settled():
	default:
		t.Fatal("Settled is open on an idle unit")
	}
	if err := m.Do(ctx, ActJoin, "test"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for m.Status().State != InCall {
		if time.Now().After(deadline) {
			t.Fatalf("state %s, want in_call", m.Status().State)
		}
		time.Sleep(time.Millisecond)
	}
	settled := m.Settled()
	select {
	case <-settled:
		t.Fatal("Settled is closed during a call")
	default:
	}
	if err := m.Do(ctx, ActLeave, "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-settled:
	case <-time.After(5 * time.Second):
		t.Fatalf("Settled still open after LEAVE; state %s", m.Status().State)
	}
	if s := m.Status().State; s != Idle {
		t.Fatalf("state %s when Settled closed, want idle", s)
	}
}
