package appliance

import (
	"context"
	"testing"
	"time"

	"github.com/konsult/konsult/hal/led"
	"github.com/konsult/konsult/media/gate"
)

type quietShutter struct{}

func (quietShutter) Open(context.Context) error  { return nil }
func (quietShutter) Close(context.Context) error { return nil }

type quietLED struct{}

func (quietLED) Set(led.State) error { return nil }

func TestAliveAnswersOnlyWhileTheLoopRuns(t *testing.T) {
	m := New(Config{Gate: gate.New(), Shutter: quietShutter{}, LED: quietLED{},
		Conference: JoinWith(func(context.Context) (Call, error) { return nil, context.Canceled })})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	<-m.Ready()

	short, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := m.Alive(short); err != nil {
		t.Fatalf("a running machine must answer: %v", err)
	}
	stop()
	<-done

	// A stopped loop is what a hung one looks like from outside: the
	// watchdog must not be fed.
	short2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err := m.Alive(short2); err == nil {
		t.Fatal("a stopped machine answered Alive; a hung roomd would never be restarted")
	}
}
