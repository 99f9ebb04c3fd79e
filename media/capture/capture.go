package capture

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/driver"
	"github.com/pion/mediadevices/pkg/io/audio"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"
	"github.com/pion/mediadevices/pkg/wave"

	"image"

	// The simulated unit's camera and microphone: mediadevices' test
	// drivers (moving colour bars, a 480 Hz tone).
	_ "github.com/pion/mediadevices/pkg/driver/audiotest"
	_ "github.com/pion/mediadevices/pkg/driver/videotest"

	"github.com/konsult/konsult/media/gate"
)

// Config for one capture session (one call).
type Config struct {
	Gate          *gate.Gate
	Width, Height int // what the camera delivers; the slate has this size
	FPS           int
	// Camera and Microphone select the devices: TestDevice, "" for the
	// first real one, or part of a device's label (e.g. /dev/video0).
	Camera, Microphone string
	Video              codec.VideoEncoderBuilder
	Audio              codec.AudioEncoderBuilder
	// Stamp draws the capture time into each camera frame (see WriteStamp):
	// for the simulated unit's glass-to-glass benchmark only.
	Stamp bool
	// Processor, if set, cleans the microphone after the gate (echo
	// cancellation, noise suppression, gain control); Room, if set, is the
	// simulated room's echo added to the microphone before it.
	Processor AudioProcessor
	Room      RoomEcho
}

// Capture is a camera and microphone behind the gate, ready to be added to
// a PeerConnection. Nothing is written to disk.
type Capture struct {
	Counters *Counters
	Keys     *KeyFrames // keyframes forced for the slate
	g        *gate.Gate
	selector *mediadevices.CodecSelector
	stream   mediadevices.MediaStream
	done     chan struct{}

	stopOnce, closeOnce sync.Once
	reading             atomic.Int32 // pipelines whose encoder has started reading and not ended
	lost                chan error   // a device failed mid-call
	fail                [2]atomic.Pointer[error]
}

// Lost yields an error when the camera or microphone fails mid-call (the
// error says which). The call must end: the appliance shuts the gate and
// shows the fault.
func (c *Capture) Lost() <-chan error { return c.lost }

// LoseDevice makes the next read of kind fail as an unplugged device would:
// the simulated unit's fault injection, through the same path as a real loss.
func (c *Capture) LoseDevice(k gate.Kind, err error) { c.fail[k].Store(&err) }

func (c *Capture) injectVideo() video.TransformFunc {
	return func(r video.Reader) video.Reader {
		return video.ReaderFunc(func() (img image.Image, release func(), err error) {
			if e := c.fail[gate.Video].Load(); e != nil {
				return nil, func() {}, *e
			}
			defer driverPanic("camera", &release, &err)
			return r.Read()
		})
	}
}

func (c *Capture) injectAudio() audio.TransformFunc {
	return func(r audio.Reader) audio.Reader {
		return audio.ReaderFunc(func() (a wave.Audio, release func(), err error) {
			if e := c.fail[gate.Audio].Load(); e != nil {
				return nil, func() {}, *e
			}
			defer driverPanic("microphone", &release, &err)
			return r.Read()
		})
	}
}

// driverPanic turns a panic in a device driver's reader (mediadevices'
// drivers panic on formats they cannot decode) into a read error: the
// device is lost, the call ends with the reason and a fault, and the unit
// keeps running.
func driverPanic(device string, release *func(), err *error) {
	if p := recover(); p != nil {
		*release = func() {}
		*err = fmt.Errorf("%s driver failed: %v: %w", device, p, ErrDriverFailed)
	}
}

// ErrDriverFailed: a camera or microphone driver failed while reading.
var ErrDriverFailed = errors.New("the device cannot be read (unsupported format?)")

// track counts a video pipeline as reading from the encoder's first read on.
// It must be the outermost transform: a read blocked on a shut gate counts.
func (c *Capture) track() video.TransformFunc {
	return func(r video.Reader) video.Reader {
		var once sync.Once
		return video.ReaderFunc(func() (image.Image, func(), error) {
			once.Do(func() { c.reading.Add(1) })
			return r.Read()
		})
	}
}

func (c *Capture) trackAudio() audio.TransformFunc {
	return func(r audio.Reader) audio.Reader {
		var once sync.Once
		return audio.ReaderFunc(func() (wave.Audio, func(), error) {
			once.Do(func() { c.reading.Add(1) })
			return r.Read()
		})
	}
}

func (c *Capture) readerEnded(err error) {
	c.reading.Add(-1)
	if !errors.Is(err, io.EOF) {
		select {
		case c.lost <- err:
		default:
		}
	}
}

// Open opens the devices and inserts the gate before the encoders.
func Open(cfg Config) (*Capture, error) {
	// A camera that codes H.264 itself is opened by its PassThrough, not
	// by mediadevices (one node streams one format at a time).
	pt := passThroughOf(cfg.Video)
	keys := &KeyFrames{}
	if pt == nil {
		// Outermost, so it forces keyframes on the encoder through any
		// frame transform (which keeps the encoder's controller).
		cfg.Video = keys.Wrap(cfg.Video)
	}
	sel := mediadevices.NewCodecSelector(
		mediadevices.WithVideoEncoders(cfg.Video),
		mediadevices.WithAudioEncoders(cfg.Audio),
	)
	var cam Device
	var err error
	if pt == nil {
		if cam, err = pick("camera", cfg.Camera); err != nil {
			return nil, err
		}
	}
	mic, err := pick("microphone", cfg.Microphone)
	if err != nil {
		return nil, err
	}
	constraints := mediadevices.MediaStreamConstraints{
		Audio: func(c *mediadevices.MediaTrackConstraints) {
			c.DeviceID = prop.StringExact(mic.id)
		},
		Codec: sel,
	}
	if pt == nil {
		constraints.Video = func(c *mediadevices.MediaTrackConstraints) {
			c.DeviceID = prop.StringExact(cam.id)
			// Exact: the privacy slate is made at this size, and the
			// encoder takes no other.
			c.Width = prop.IntExact(cfg.Width)
			c.Height = prop.IntExact(cfg.Height)
			c.FrameRate = prop.Float(cfg.FPS)
		}
	}
	stream, err := mediadevices.GetUserMedia(constraints)
	if err != nil {
		if pt != nil {
			return nil, fmt.Errorf("open microphone %q: %w", mic.Label, err)
		}
		return nil, fmt.Errorf("open camera %q (%dx%d) and microphone %q: %w: check the camera supports that size (v4l2-ctl --list-formats-ext) and set conference.width/height to one it does",
			cam.Label, cfg.Width, cfg.Height, mic.Label, err)
	}
	c := &Capture{g: cfg.Gate, Counters: &Counters{}, Keys: keys, selector: sel, stream: stream, done: make(chan struct{}), lost: make(chan error, 2)}
	for _, t := range stream.GetVideoTracks() {
		t.(*mediadevices.VideoTrack).Transform(stopOnDone(c.done), c.injectVideo(), stampVideo(cfg.Stamp), gateVideo(cfg.Gate, cfg.Width, cfg.Height, cfg.FPS, c.done, c.Counters, c.readerEnded, keys), c.track())
	}
	for _, t := range stream.GetAudioTracks() {
		t.(*mediadevices.AudioTrack).Transform(stopAudioOnDone(c.done), c.injectAudio(), withRoom(cfg.Room), gateAudio(cfg.Gate, c.done, c.Counters, c.readerEnded, cfg.Processor), c.trackAudio())
	}
	if pt != nil {
		stream.AddTrack(openPassThrough(c, pt, cfg))
	}
	return c, nil
}

// stopOnDone ends the camera's stream once the call is over, so the encoder
// goroutine returns instead of waiting on a device being closed.
func stopOnDone(done <-chan struct{}) video.TransformFunc {
	return func(r video.Reader) video.Reader {
		return video.ReaderFunc(func() (image.Image, func(), error) {
			select {
			case <-done:
				return nil, func() {}, io.EOF
			default:
				return r.Read()
			}
		})
	}
}

func stopAudioOnDone(done <-chan struct{}) audio.TransformFunc {
	return func(r audio.Reader) audio.Reader {
		return audio.ReaderFunc(func() (wave.Audio, func(), error) {
			select {
			case <-done:
				return nil, func() {}, io.EOF
			default:
				return r.Read()
			}
		})
	}
}

// Selector populates a PeerConnection's MediaEngine with the chosen codecs.
func (c *Capture) Selector() *mediadevices.CodecSelector { return c.selector }

// Tracks are the camera and microphone tracks.
func (c *Capture) Tracks() []mediadevices.Track { return c.stream.GetTracks() }

// Stop ends the pipelines and returns once each track's reader has ended
// (or after wait, for a track nobody is reading). Then close whatever reads
// the tracks (the PeerConnection), then Close.
//
// The order matters twice over. A test camera whose driver is closed under a
// pending read never returns. And mediadevices' track unbind (run by
// PeerConnection.Close) deadlocks if its encoder loop ends on its own at the
// same moment; once that loop has ended first, unbind returns at once.
func (c *Capture) Stop(wait time.Duration) {
	c.stopOnce.Do(func() { close(c.done) })
	if c.reading.Load() <= 0 {
		return // no encoder ever started: nothing to wait for
	}
	deadline := time.Now().Add(wait)
	for c.reading.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// The encoder loop ends right after its read fails; give it time to
	// finish, or mediadevices' unbind may race it (see livekit.boundedUnbind).
	time.Sleep(100 * time.Millisecond)
}

// Close stops the pipelines if needed and releases the devices.
func (c *Capture) Close() {
	c.stopOnce.Do(func() { close(c.done) })
	c.closeOnce.Do(func() {
		for _, t := range c.stream.GetTracks() {
			_ = t.Close()
		}
	})
}

// DevicesOpen lists the capture devices that are open now: after a call has
// ended it must be empty (the camera is released with the call).
func DevicesOpen() []string {
	open := passThroughsOpen()
	for _, d := range driver.GetManager().Query(func(driver.Driver) bool { return true }) {
		if d.Status() == driver.StateOpened || d.Status() == driver.StateRunning {
			open = append(open, d.Info().Label)
		}
	}
	return open
}
