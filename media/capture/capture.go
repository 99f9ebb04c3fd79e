package capture

import (
	"fmt"
	"io"
	"sync"

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
	Video         codec.VideoEncoderBuilder
	Audio         codec.AudioEncoderBuilder
}

// Capture is a camera and microphone behind the gate, ready to be added to
// a PeerConnection. Nothing is written to disk.
type Capture struct {
	Counters *Counters
	selector *mediadevices.CodecSelector
	stream   mediadevices.MediaStream
	done     chan struct{}

	stopOnce, closeOnce sync.Once
}

// Open opens the devices and inserts the gate before the encoders.
func Open(cfg Config) (*Capture, error) {
	sel := mediadevices.NewCodecSelector(
		mediadevices.WithVideoEncoders(cfg.Video),
		mediadevices.WithAudioEncoders(cfg.Audio),
	)
	stream, err := mediadevices.GetUserMedia(mediadevices.MediaStreamConstraints{
		Video: func(c *mediadevices.MediaTrackConstraints) {
			c.Width = prop.Int(cfg.Width)
			c.Height = prop.Int(cfg.Height)
			c.FrameRate = prop.Float(cfg.FPS)
		},
		Audio: func(c *mediadevices.MediaTrackConstraints) {},
		Codec: sel,
	})
	if err != nil {
		return nil, fmt.Errorf("open camera and microphone: %w", err)
	}
	c := &Capture{Counters: &Counters{}, selector: sel, stream: stream, done: make(chan struct{})}
	for _, t := range stream.GetVideoTracks() {
		t.(*mediadevices.VideoTrack).Transform(stopOnDone(c.done), GateVideo(cfg.Gate, cfg.Width, cfg.Height, c.done, c.Counters))
	}
	for _, t := range stream.GetAudioTracks() {
		t.(*mediadevices.AudioTrack).Transform(stopAudioOnDone(c.done), GateAudio(cfg.Gate, c.done, c.Counters))
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

// Stop makes the pipelines end at their next read. Call it, then stop
// whatever reads the tracks (close the PeerConnection), then Close: a test
// camera whose driver is closed under a pending read never returns.
func (c *Capture) Stop() {
	c.stopOnce.Do(func() { close(c.done) })
}

// Close stops the pipelines if needed and releases the devices.
func (c *Capture) Close() {
	c.Stop()
	c.closeOnce.Do(func() {
		for _, t := range c.stream.GetTracks() {
			_ = t.Close()
		}
	})
}

// DevicesOpen lists the capture devices that are open now: after a call has
// ended it must be empty (the camera is released with the call).
func DevicesOpen() []string {
	var open []string
	for _, d := range driver.GetManager().Query(func(driver.Driver) bool { return true }) {
		if d.Status() == driver.StateOpened || d.Status() == driver.StateRunning {
			open = append(open, d.Info().Label)
		}
	}
	return open
}
