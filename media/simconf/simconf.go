// Package simconf is the conference of the simulated unit when no conference
// server is configured: Join "connects" locally after a short delay, opens
// mediadevices' test camera and microphone, and hands every frame the
// privacy gate admits to a local sink that counts it. Nothing is encoded or
// sent anywhere, and nothing is written to disk.
//
// It exists so a newcomer can exercise the whole unit — buttons, shutter,
// LED, gate — with no server, and so tests can check at the sink what would
// have left the room.
package simconf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/pion/mediadevices/pkg/driver"
	"github.com/pion/mediadevices/pkg/io/audio"
	"github.com/pion/mediadevices/pkg/io/video"

	// The test drivers: a moving colour-bar camera and a 480 Hz microphone.
	_ "github.com/pion/mediadevices/pkg/driver/audiotest"
	_ "github.com/pion/mediadevices/pkg/driver/videotest"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
)

// Config for the simulated conference.
type Config struct {
	Gate      *gate.Gate
	JoinDelay time.Duration // how long "connecting" takes; default 150ms
}

// Stats is what reached the local sink.
type Stats struct {
	VideoFrames uint64 `json:"video_frames"` // camera frames the gate admitted
	AudioChunks uint64 `json:"audio_chunks"` // mic chunks the gate admitted
	Slates      uint64 `json:"slates"`       // privacy slates sent when video closed
	LastIsSlate bool   `json:"last_is_slate"`
	InCall      bool   `json:"in_call"`
}

// Conference is safe for concurrent use; one call at a time.
type Conference struct {
	cfg Config

	mu       sync.Mutex
	failNext error
	cur      *Call
	n        int

	sink capture.Counters // what the production gate transforms let through
}

// New returns a simulated conference bound to g.
func New(cfg Config) *Conference {
	if cfg.JoinDelay == 0 {
		cfg.JoinDelay = 150 * time.Millisecond
	}
	return &Conference{cfg: cfg}
}

// FailNextJoin makes the next Join fail with err (fault injection).
func (c *Conference) FailNextJoin(err error) {
	c.mu.Lock()
	c.failNext = err
	c.mu.Unlock()
}

// Drop ends the current call from the "server" side with err.
func (c *Conference) Drop(err error) bool {
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	if cur == nil {
		return false
	}
	go cur.end(err)
	return true
}

// Stats returns the sink's counters.
func (c *Conference) Stats() Stats {
	c.mu.Lock()
	in := c.cur != nil
	c.mu.Unlock()
	return Stats{
		VideoFrames: c.sink.VideoFrames.Load(),
		AudioChunks: c.sink.AudioChunks.Load(),
		Slates:      c.sink.Slates.Load(),
		LastIsSlate: c.sink.LastIsSlate.Load(),
		InCall:      in,
	}
}

// Join opens the test camera and microphone and starts the gated pipelines.
func (c *Conference) Join(ctx context.Context) (*Call, error) {
	c.mu.Lock()
	fail := c.failNext
	c.failNext = nil
	busy := c.cur != nil
	c.n++
	id := fmt.Sprintf("sim-%04d", c.n)
	c.mu.Unlock()
	if busy {
		return nil, errors.New("simulated conference: already in a call")
	}
	select {
	case <-time.After(c.cfg.JoinDelay):
	case <-ctx.Done():
		return nil, fmt.Errorf("join simulated conference: %w", ctx.Err())
	}
	if fail != nil {
		return nil, fmt.Errorf("join simulated conference: %w", fail)
	}
	call := &Call{id: id, conf: c, ended: make(chan error, 1), stop: make(chan struct{})}
	vr, err := call.openVideo()
	if err != nil {
		call.closeDevices()
		return nil, err
	}
	ar, err := call.openAudio()
	if err != nil {
		call.closeDevices()
		return nil, err
	}
	c.mu.Lock()
	c.cur = call
	c.mu.Unlock()
	call.wg.Add(2)
	// The same gate transforms as a real connector, in front of a sink
	// instead of an encoder.
	go call.pumpVideo(capture.GateVideo(c.cfg.Gate, 640, 480, 30, call.stop, &c.sink, nil)(vr))
	go call.pumpAudio(capture.GateAudio(c.cfg.Gate, call.stop, &c.sink, nil)(ar))
	return call, nil
}

// Call is one simulated meeting.
type Call struct {
	id    string
	conf  *Conference
	devs  []driver.Driver
	ended chan error
	stop  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// ID is the pseudonymous meeting id.
func (c *Call) ID() string { return c.id }

// Ended yields once if the "server" drops the call.
func (c *Call) Ended() <-chan error { return c.ended }

// Leave stops capture and releases the devices.
func (c *Call) Leave(ctx context.Context) error {
	c.shutdown(nil, false)
	return nil
}

// end is the "server" ending the call; never call it from a pump goroutine
// (shutdown waits for them).
func (c *Call) end(err error) { c.shutdown(err, true) }

func (c *Call) shutdown(err error, byServer bool) {
	c.once.Do(func() {
		// Stop the pumps first and close the drivers after: the test camera's
		// reader blocks for ever if its driver is closed under it.
		close(c.stop)
		c.wg.Wait()
		c.closeDevices()
		c.conf.mu.Lock()
		if c.conf.cur == c {
			c.conf.cur = nil
		}
		c.conf.mu.Unlock()
		if byServer {
			c.ended <- err
		}
		close(c.ended)
	})
}

// The test drivers are used directly rather than through mediadevices'
// tracks: a track's reader does not return after the track is closed, and a
// call must be able to end.
func (c *Call) openVideo() (video.Reader, error) {
	d, err := openDriver(driver.Camera)
	if err != nil {
		return nil, fmt.Errorf("open test camera: %w", err)
	}
	c.devs = append(c.devs, d)
	p := d.Properties()[0]
	r, err := d.(driver.VideoRecorder).VideoRecord(p)
	if err != nil {
		return nil, fmt.Errorf("start test camera: %w", err)
	}
	return r, nil
}

func (c *Call) openAudio() (audio.Reader, error) {
	d, err := openDriver(driver.Microphone)
	if err != nil {
		return nil, fmt.Errorf("open test microphone: %w", err)
	}
	c.devs = append(c.devs, d)
	r, err := d.(driver.AudioRecorder).AudioRecord(d.Properties()[0])
	if err != nil {
		return nil, fmt.Errorf("start test microphone: %w", err)
	}
	return r, nil
}

func openDriver(t driver.DeviceType) (driver.Driver, error) {
	// Only the test drivers: the real camera and microphone drivers are
	// registered too (media/capture), and the simulated unit must never
	// open them.
	want := map[driver.DeviceType]string{driver.Camera: "VideoTest", driver.Microphone: "AudioTest"}[t]
	ds := driver.GetManager().Query(func(d driver.Driver) bool { return d.Info().DeviceType == t && d.Info().Label == want })
	if len(ds) == 0 {
		return nil, errors.New("no test driver registered")
	}
	d := ds[0]
	if err := d.Open(); err != nil {
		return nil, err
	}
	return d, nil
}

func (c *Call) closeDevices() {
	for _, d := range c.devs {
		_ = d.Close()
	}
	c.devs = nil
}

func (c *Call) stopped() bool {
	select {
	case <-c.stop:
		return true
	default:
		return false
	}
}

// pumpVideo is the local sink: it drains what the gate lets through. The
// gated reader blocks while the gate is shut and ends when the call stops.
func (c *Call) pumpVideo(r video.Reader) {
	defer c.wg.Done()
	for {
		_, release, err := r.Read()
		if err != nil {
			if !errors.Is(err, io.EOF) && !c.stopped() {
				go c.end(fmt.Errorf("camera lost: %w", err))
			}
			return
		}
		release()
	}
}

func (c *Call) pumpAudio(r audio.Reader) {
	defer c.wg.Done()
	for {
		_, release, err := r.Read()
		if err != nil {
			if !errors.Is(err, io.EOF) && !c.stopped() {
				go c.end(fmt.Errorf("microphone lost: %w", err))
			}
			return
		}
		release()
	}
}
