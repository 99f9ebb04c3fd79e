package button

import (
	"testing"
	"time"

	"github.com/konsult/konsult/hal/sim"
)

// A press made right after New must count, and no press or release may be
// lost over many fast cycles (regression: the starting level used to be read
// late, turning an early press into "held since start").
func TestStressPressRelease(t *testing.T) {
	pin := sim.NewPin("GPIO17", 17, H)
	btn, err := New(pin, Config{Name: "join", Debounce: time.Millisecond, LongPress: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer btn.Halt()
	wait := func(k Kind, i int) {
		for {
			select {
			case e := <-btn.Events():
				if e.Kind == k {
					return
				}
			case <-time.After(300 * time.Millisecond):
				t.Fatalf("cycle %d: no %s; pin level %v, queued edges %d", i, k, pin.Read(), len(pin.EdgesChan))
			}
		}
	}
	for i := 0; i < 300; i++ {
		pin.Drive(L)
		wait(Down, i)
		pin.Drive(H)
		wait(Up, i)
	}
}
