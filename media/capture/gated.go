// Package capture opens the unit's camera and microphone and puts the
// privacy gate between them and the encoders.
//
// The gate is a transform on the raw frames, before mediadevices hands them
// to an encoder. While the gate is shut the transform does not read the
// camera at all; the encoder waits, so nothing is encoded and nothing is
// sent but the privacy slate (a uniform frame of the camera's size) and
// silence, so the far end's picture is the slate and its sound is silence,
// never the room.
//
// The slate and the silence go on for as long as the gate is shut, not once
// per close: on a lossy link the packets of a single slate can be lost, and
// a decoder that missed one needs a keyframe before it shows anything new
// (the far end would keep the room's last picture, frozen). So after
// SlatesPerClose slates one frame interval apart, a slate follows every
// SlateInterval, each one coded as a keyframe (KeyFrames): it needs no
// earlier frame, so a far end that lost packets, asks for a keyframe
// (PLI/FIR) or subscribes while the unit is private is on the slate within
// one SlateInterval, and never needs a room frame for it. Silence goes on
// at the microphone's own pace, so the far end's loss concealment has
// silence, not the room, to extend.
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
	// StaleDropped counts microphone chunks read right after the gate
	// opened that the mic had held since it was shut: dropped unsent.
	StaleDropped atomic.Uint64
	LastIsSlate  atomic.Bool
}

// SlatesPerClose is how many slate frames follow each close, one frame
// interval apart: the far end is on the slate a frame or two after the
// close even when the first is lost. Repeats at SlateInterval follow.
const SlatesPerClose = 3

// SlateInterval is how often the slate is repeated, as a keyframe, while the
// gate stays shut: a far end that lost the first slates (or joined later) is
// on the slate within this time of its next packet getting through. A
// uniform keyframe is one small packet (see docs/PERFORMANCE.md, "Privacy
// slate"), so 4 a second cost about 2 kB/s.
const SlateInterval = 250 * time.Millisecond

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
	return gateVideo(g, w, h, fps, done, n, ended, nil)
}

// gateVideo is GateVideo that also marks, in keys, when the encoder's next
// frame should be a keyframe: after every slate, since while shut the next
// frame is another slate (and if the gate opens instead, a keyframe is what
// the far end's decoder needs then too). KeyFrames acts on the mark.
func gateVideo(g *gate.Gate, w, h, fps int, done <-chan struct{}, n *Counters, ended func(error), keys *KeyFrames) video.TransformFunc {
	slate := Slate(w, h)
	interval := time.Second / 30
	if fps > 0 {
		interval = time.Second / time.Duration(fps)
	}
	return func(r video.Reader) video.Reader {
		slatesDue := SlatesPerClose // the gate starts shut: the slate lets the encoder start
		var once sync.Once
		giveSlate := func() (image.Image, func(), error) {
			n.Slates.Add(1)
			n.LastIsSlate.Store(true)
			keys.want()
			return slate, func() {}, nil
		}
		return video.ReaderFunc(func() (img image.Image, release func(), err error) {
			defer func() {
				if err != nil && ended != nil {
					once.Do(func() { ended(err) })
				}
			}()
			for {
				changed := g.Changed()
				if !g.State().Video {
					wait := SlateInterval
					if slatesDue > 0 {
						wait = interval // pace the first repeats like camera frames
						if slatesDue == SlatesPerClose {
							wait = 0 // the close: the slate at once
						}
						slatesDue--
					}
					if wait > 0 {
						switch pause(wait, changed, done) {
						case gateChanged:
							continue
						case callOver:
							return nil, func() {}, io.EOF
						}
					}
					return giveSlate()
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
// While the gate is shut it hands over silence, of the microphone's last
// format, at the pace the microphone would (one chunk per chunk duration),
// and never reads the microphone.
func GateAudio(g *gate.Gate, done <-chan struct{}, n *Counters, ended func(error)) audio.TransformFunc {
	return gateAudio(g, done, n, ended, nil)
}

// gateAudio is GateAudio with the microphone's processing (may be nil)
// behind the gate: only admitted chunks reach it, and it is reset on every
// close (process.go).
func gateAudio(g *gate.Gate, done <-chan struct{}, n *Counters, ended func(error), proc AudioProcessor) audio.TransformFunc {
	return func(r audio.Reader) audio.Reader {
		mp := &micProc{p: proc}
		silence := wave.Audio(wave.NewFloat32Interleaved(wave.ChunkInfo{Channels: 1, Len: 960, SamplingRate: 48000}))
		var next time.Time // when the next chunk of silence is due; zero: at once
		stale := true      // the gate was shut: what the mic holds now is from then
		dropped := 0       // stale chunks dropped since the gate opened
		var liveFrom time.Time
		var liveDur time.Duration // audio handed over since liveFrom
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
					mp.closed()
					now := time.Now()
					if wait := next.Sub(now); wait > 0 {
						switch pause(wait, changed, done) {
						case gateChanged:
							continue
						case callOver:
							return nil, func() {}, io.EOF
						}
					} else if next.IsZero() || -wait > 5*chunkLen(silence) {
						next = now // the close, or far behind: the pace starts again from now
					}
					next = next.Add(chunkLen(silence))
					n.Silences.Add(1)
					stale = true
					return silence, func() {}, nil
				}
				next = time.Time{}
				began := time.Now()
				chunk, release, err = r.Read()
				if err != nil {
					if !errors.Is(err, io.EOF) {
						err = fmt.Errorf("microphone lost: %w", err)
					}
					return nil, func() {}, err
				}
				// After the gate was shut, a microphone that kept capturing
				// (a driver's ring buffer, the test driver catching up) hands
				// over what it holds at once: sound from while the unit was
				// muted, and a burst that would sit in the far end's jitter
				// buffer and play on into the next mute. Chunks that come
				// faster than half their length go; the first that had to be
				// waited for is live.
				if stale && err == nil {
					if time.Since(began) < chunkLen(chunk)/2 && dropped < maxStale {
						release()
						dropped++
						n.StaleDropped.Add(1)
						continue
					}
					stale, dropped = false, 0
					liveFrom, liveDur = time.Now(), 0
				}
				// And never faster than real time: a backlog the check above
				// missed (a loaded machine can make even a buffered read slow)
				// goes too, rather than reaching the far end as a burst.
				if liveDur-time.Since(liveFrom) > maxAhead {
					mp.dropped(chunk)
					release()
					n.StaleDropped.Add(1)
					continue
				}
				liveDur += chunkLen(chunk)
				rel, ok := g.Enter(gate.Audio)
				if !ok {
					release()
					mp.closed()
					continue
				}
				mp.admitted(g, chunk)
				rel()
				// Silence of the mic's own format, for the next close.
				silence = silent(chunk)
				n.AudioChunks.Add(1)
				return chunk, release, nil
			}
		})
	}
}

type pauseEnd int

const (
	waited pauseEnd = iota
	gateChanged
	callOver
)

// pause waits d while the gate is shut: the slate's and the silence's
// pace. It ends early when the gate changes or the call is over.
func pause(d time.Duration, changed <-chan struct{}, done <-chan struct{}) pauseEnd {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return waited
	case <-changed:
		return gateChanged
	case <-done:
		return callOver
	}
}

// maxAhead is how far the audio handed over since the gate opened may run
// ahead of the clock (a microphone's delivery jitter) before chunks are
// dropped as backlog.
const maxAhead = 100 * time.Millisecond

// maxStale bounds the chunks dropped after one open (10 s of 20 ms chunks):
// a microphone that never blocks is live, not stale.
const maxStale = 500

// chunkLen is how much time a chunk of audio covers (20 ms if unknown).
func chunkLen(a wave.Audio) time.Duration {
	info := a.ChunkInfo()
	if info.Len <= 0 || info.SamplingRate <= 0 {
		return 20 * time.Millisecond
	}
	return time.Duration(info.Len) * time.Second / time.Duration(info.SamplingRate)
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
