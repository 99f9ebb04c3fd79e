package capture

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pion/mediadevices"

	"github.com/konsult/konsult/media/gate"
)

func TestPickTestDevices(t *testing.T) {
	for _, kind := range []string{"camera", "microphone"} {
		d, err := pick(kind, TestDevice)
		if err != nil || !d.Test {
			t.Fatalf("%s %q: got %+v, %v; want the test driver", kind, TestDevice, d, err)
		}
	}
}

// A camera that isn't there is refused with the reason and what to do,
// never silently replaced by another device (least of all the test one).
func TestPickMissingCamera(t *testing.T) {
	for _, d := range Devices() {
		if d.Kind == "camera" && !d.Test {
			t.Skipf("this machine has a camera (%s)", d.Label)
		}
	}
	_, err := pick("camera", "")
	if !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), "/dev/video") {
		t.Fatalf("no camera: %v", err)
	}
	_, err = pick("camera", "/dev/video7")
	if !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), `"/dev/video7"`) {
		t.Fatalf("named camera missing: %v", err)
	}
	if _, err := Open(Config{Camera: "", Microphone: TestDevice, Width: 640, Height: 480, FPS: 30}); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("Open without a camera: %v", err)
	}
}

// The hardware microphone path (ALSA through miniaudio) on this machine's
// ALSA devices. With no sound card that is ALSA's own "null" PCM, which
// reports "any channel count": mediadevices' ALSA reader cannot decode
// that and panics. The unit must treat it as a lost microphone (the call
// ends with the reason, the fault shows), never crash. A real microphone
// capturing is proved in the QEMU lab (snd-aloop).
func TestALSAMicrophoneDriverFailureIsALostDevice(t *testing.T) {
	mic, err := pick("microphone", "")
	if err != nil {
		if os.Getenv("KONSULT_REQUIRE_REAL_PARTS") == "1" {
			t.Fatalf("no ALSA capture device (libasound2 installed?): %v", err)
		}
		t.Skip(err)
	}
	g := gate.New()
	c, err := Open(Config{Gate: g, Camera: TestDevice, Microphone: "", Width: 640, Height: 480, FPS: 30})
	if err != nil {
		t.Fatalf("open ALSA device %q: %v", mic.Label, err)
	}
	defer c.Close()
	g.Set(gate.State{Audio: true})
	r := c.stream.GetAudioTracks()[0].(*mediadevices.AudioTrack).NewReader(false)
	chunks := make(chan int, 1)
	go func() {
		n := 0
		for n < 5 {
			if _, release, err := r.Read(); err != nil {
				break
			} else {
				release()
			}
			n++
		}
		chunks <- n
	}()
	select {
	case err := <-c.Lost():
		if !strings.Contains(err.Error(), "microphone") {
			t.Fatalf("lost, but the reason does not name the microphone: %v", err)
		}
		t.Logf("ALSA device %q: %v", mic.Label, err)
	case n := <-chunks:
		t.Logf("ALSA device %q captured %d chunks", mic.Label, n)
	case <-time.After(5 * time.Second):
		t.Fatalf("ALSA device %q: neither audio nor a lost device in 5 s", mic.Label)
	}
}
