// Package capture opens the unit's camera and microphone and puts the
// privacy gate between them and the encoders.
//
// The gate is a transform on the raw frames, before mediadevices hands them
// to an encoder. While the gate is shut the transform does not read the
// camera at all; the encoder waits, so nothing is encoded and nothing is
// sent. On every close it first hands over one privacy slate (a uniform
// frame of the camera's size) or one chunk of silence, so the far end's
// last picture is the slate and its last sound is silence, never the room.
//
// The check happens when a frame is handed to the encoder: a camera frame
// handed over just before the gate shut (at most one) is still encoded, and
// the slate follows it.
package capture

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/mediadevices/pkg/io/audio"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/wave"

	"github.com/konsult/konsult/media/gate"
)

// Counters say what was handed to the encoders.
type Counters struct {
	VideoFrames atomic.Uint64 // camera frames admitted by the gate
	Slates      atomic.Uint64
	AudioChunks atomic.Uint64 // microphone chunks admitted
	Silences    atomic.Uint64
	LastIsSlate atomic.Bool
}

// SlatesPerClose is how many slate frames follow each close, one frame
// interval apart: one frame can be skipped by an encoder's rate control or
// lost on the way, and the far end must still end on the slate.
const SlatesPerClose = 3

// SlateColor is the privacy slate: a uniform dark slate grey.
var SlateColor = color.YCbCr{Y: 60, Cb: 132, Cr: 124}

// Slate returns a uniform frame of w×h.
func Slate(w, h int) image.Image {
	img := image.NewYCbCr(image.Rect(0, 0, w, h), image.YCbCrSubsampleRatio420)
	for i := range img.Y {
		img.Y[i] = SlateColor.Y
	}
	for i := range img.Cb {
		img.Cb[i] = SlateColor.Cb
		img.Cr[i] = SlateColor.Cr
	}
	return img
}

// GateVideo returns the transform that puts g before the video encoder. done
// ends a wait on a shut gate (the call is over).
// ended, if not nil, is called once with the first error the reader returns:
// io.EOF when the call is over, anything else when the device failed.
func GateVideo(g *gate.Gate, w, h, fps int, done <-chan struct{}, n *Counters, ended func(error)) video.TransformFunc {
	slate := Slate(w, h)
	interval := time.Second / 30
	if fps > 0 {
		interval = time.Second / time.Duration(fps)
	}
	return func(r video.Reader) video.Reader {
		slatesDue := SlatesPerClose // the gate starts shut: the slate lets the encoder start
		var once sync.Once
		return video.ReaderFunc(func() (img image.Image, release func(), err error) {
			defer func() {
				if err != nil && ended != nil {
					once.Do(func() { ended(err) })
				}
			}()
			for {
				changed := g.Changed()
				if !g.State().Video {
					if slatesDue > 0 {
						if slatesDue < SlatesPerClose {
							select { // pace the repeats like camera frames
							case <-time.After(interval):
							case <-done:
								return nil, func() {}, io.EOF
							}
						}
						slatesDue--
						n.Slates.Add(1)
						n.LastIsSlate.Store(true)
						return slate, func() {}, nil
					}
					select {
					case <-changed:
						continue
					case <-done:
						return nil, func() {}, io.EOF
					}
				}
				img, release, err = r.Read()
				if err != nil {
					if !errors.Is(err, io.EOF) {
						err = fmt.Errorf("camera lost: %w", err)
					}
					return nil, func() {}, err
				}
				rel, ok := g.Enter(gate.Video)
				if !ok { // shut while we read: this frame goes nowhere
					release()
					continue
				}
				rel()
				slatesDue = SlatesPerClose
				n.VideoFrames.Add(1)
				n.LastIsSlate.Store(false)
				return img, release, nil
			}
		})
	}
}

// GateAudio returns the transform that puts g before the audio encoder.
func GateAudio(g *gate.Gate, done <-chan struct{}, n *Counters, ended func(error)) audio.TransformFunc {
	return func(r audio.Reader) audio.Reader {
		silence := wave.Audio(wave.NewFloat32Interleaved(wave.ChunkInfo{Channels: 1, Len: 960, SamplingRate: 48000}))
		silenceDue := true
		var once sync.Once
		return audio.ReaderFunc(func() (chunk wave.Audio, release func(), err error) {
			defer func() {
				if err != nil && ended != nil {
					once.Do(func() { ended(err) })
				}
			}()
			for {
				changed := g.Changed()
				if !g.State().Audio {
					if silenceDue {
						silenceDue = false
						n.Silences.Add(1)
						return silence, func() {}, nil
					}
					select {
					case <-changed:
						continue
					case <-done:
						return nil, func() {}, io.EOF
					}
				}
				chunk, release, err = r.Read()
				if err != nil {
					if !errors.Is(err, io.EOF) {
						err = fmt.Errorf("microphone lost: %w", err)
					}
					return nil, func() {}, err
				}
				rel, ok := g.Enter(gate.Audio)
				if !ok {
					release()
					continue
				}
				rel()
				// Silence of the mic's own format, for the next close.
				silence = silent(chunk)
				silenceDue = true
				n.AudioChunks.Add(1)
				return chunk, release, nil
			}
		})
	}
}

func silent(a wave.Audio) wave.Audio {
	info := a.ChunkInfo()
	switch a.(type) {
	case *wave.Int16Interleaved:
		return wave.NewInt16Interleaved(info)
	case *wave.Int16NonInterleaved:
		return wave.NewInt16NonInterleaved(info)
	case *wave.Float32NonInterleaved:
		return wave.NewFloat32NonInterleaved(info)
	default:
		return wave.NewFloat32Interleaved(info)
	}
}
