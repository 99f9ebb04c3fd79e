// Package playout plays the far end on the unit: every remote participant's
// audio mixed onto the speaker, and every remote video made available to the
// local display, with the figures a person would notice (is there sound, is
// the picture moving).
//
// Audio goes out through miniaudio (github.com/gen2brain/malgo, which
// mediadevices already uses for the microphone): ALSA on the unit, or
// miniaudio's null device where there is no sound card (tests, a unit
// without a speaker). The null device consumes the mix in real time and
// discards it, so the unit behaves the same and the energy of what would be
// played is still measured. Nothing is ever written to disk (invariant 5).
//
// Video is not decoded here: frames are depacketised, counted and handed,
// still encoded, to whoever shows them (the display sink). Only a display
// decodes, and only what it shows.
package playout

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/gen2brain/malgo"

	"github.com/konsult/konsult/media/e2ee"
)

// SampleRate is the rate of the mix and of the speaker (Opus's own).
const SampleRate = 48000

// Devices that Config.Device takes besides an ALSA device name.
const (
	DeviceNull  = "null"  // miniaudio's null device: real-time, discards the sound
	DeviceClock = "clock" // no audio library at all: a Go timer pulls the mix
)

// backendNull is miniaudio's ma_backend_null. malgo v0.11.24's BackendNull
// is one short (it misses ma_backend_custom, added to miniaudio's enum
// before null) and selects the custom backend, which fails "No backend".
const backendNull = malgo.Backend(malgo.BackendNull + 1)

// Config for one call's playout.
type Config struct {
	// Device is the speaker: "" or "default" for ALSA's default device,
	// DeviceNull or DeviceClock where there is no sound card.
	Device string
	// Transform, if set, changes each encoded frame before it is decoded or
	// shown (end-to-end decryption); an error drops the frame.
	Transform func(kind string, frame []byte) ([]byte, error)
	// E2EE, if set, decrypts every remote frame (livekit-client's frame
	// format, media/e2ee) before Transform, playout and OnVideoFrame. A
	// frame that does not decrypt is dropped and counted
	// (Stats.E2EEDecryptFailures), never played or shown.
	E2EE *e2ee.Key
	// OnVideoFrame receives every whole remote video frame, still encoded
	// (the display sink). It must not block.
	OnVideoFrame func(VideoFrame)
	// OnMix receives the exact mix handed to the speaker (mono, SampleRate,
	// clipped), every period, silence included: the echo canceller's
	// reference (see tap.go). It runs in the device's callback: it must
	// not block nor keep the slice.
	OnMix func([]float32)
	Log   *slog.Logger
}

// VideoFrame is one encoded remote video frame for the display.
type VideoFrame struct {
	Participant string // pseudonymous id
	Codec       string // "VP8", "H264", ...
	Keyframe    bool
	Width       int // from the last keyframe (VP8); 0 when unknown
	Height      int
	Data        []byte
	At          time.Time
}

// Player mixes and plays one call's remote audio and collects its remote
// video. Create with Open; Close releases the speaker.
type Player struct {
	cfg    Config
	log    *slog.Logger
	device string // what actually plays, for status and tests

	mu      sync.Mutex
	sources map[*source]struct{}
	videos  map[*videoTrack]struct{}

	energy atomic.Uint64 // float64 bits: RMS of the mix over the last ~100 ms
	peak   atomic.Uint64
	played atomic.Uint64 // samples handed to the device

	e2eeOK, e2eeFailures atomic.Uint64 // remote frames decrypted / dropped
	winSum               float64       // only the device callback touches these
	winN                 int
	scratch              []float32

	ctx    *malgo.AllocatedContext
	dev    *malgo.Device
	stop   chan struct{}
	closed sync.Once
}

// Open starts the speaker. A failing ALSA device is an error that names the
// fix; it never silently falls back to the null device (a unit that plays
// nothing must say so).
func Open(cfg Config) (*Player, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	p := &Player{cfg: cfg, log: cfg.Log, sources: map[*source]struct{}{}, videos: map[*videoTrack]struct{}{}, stop: make(chan struct{})}
	switch cfg.Device {
	case DeviceClock:
		p.device = "clock (no audio device: the mix is measured and discarded)"
		go p.clock()
		return p, nil
	case DeviceNull:
		p.device = "null (miniaudio null device, no sound card: the mix is measured and discarded)"
		if err := p.openMalgo(backendNull, ""); err != nil {
			return nil, fmt.Errorf("speaker (null device): %w", err)
		}
	default:
		name := cfg.Device
		if name == "" {
			name = "default"
		}
		p.device = "alsa:" + name
		if err := p.openMalgo(malgo.BackendAlsa, name); err != nil {
			return nil, fmt.Errorf("speaker %q: %w: check the sound card (aplay -l) and set conference.speaker, or \"null\" on a unit without one", name, err)
		}
	}
	return p, nil
}

func (p *Player) openMalgo(backend malgo.Backend, name string) error {
	ctx, err := malgo.InitContext([]malgo.Backend{backend}, malgo.ContextConfig{}, nil)
	if err != nil {
		return err
	}
	dc := malgo.DefaultDeviceConfig(malgo.Playback)
	dc.Playback.Format = malgo.FormatF32
	dc.Playback.Channels = 1
	dc.SampleRate = SampleRate
	dc.PeriodSizeInMilliseconds = 10
	if name != "" && name != "default" {
		infos, err := ctx.Devices(malgo.Playback)
		if err == nil {
			for i := range infos {
				if infos[i].Name() == name || fmt.Sprint(infos[i].ID) == name {
					dc.Playback.DeviceID = infos[i].ID.Pointer()
				}
			}
		}
	}
	dev, err := malgo.InitDevice(ctx.Context, dc, malgo.DeviceCallbacks{
		Data: func(out, _ []byte, frames uint32) {
			if len(out) < int(frames)*4 || frames == 0 {
				return
			}
			p.pull(unsafe.Slice((*float32)(unsafe.Pointer(&out[0])), frames))
		},
	})
	if err != nil {
		_ = ctx.Uninit()
		ctx.Free()
		return err
	}
	if err := dev.Start(); err != nil {
		dev.Uninit()
		_ = ctx.Uninit()
		ctx.Free()
		return err
	}
	p.ctx, p.dev = ctx, dev
	return nil
}

// clock pulls the mix in real time without an audio library.
func (p *Player) clock() {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	buf := make([]float32, SampleRate/100)
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.pull(buf)
		}
	}
}

// Device says what plays the sound.
func (p *Player) Device() string { return p.device }

// pull fills out with the mix of every source (silence where none speaks)
// and measures it. Sources are summed, then clipped: several people talking
// at once are all heard.
func (p *Player) pull(out []float32) {
	clear(out)
	if cap(p.scratch) < len(out) {
		p.scratch = make([]float32, len(out))
	}
	tmp := p.scratch[:len(out)]
	p.mu.Lock()
	for s := range p.sources {
		n := s.take(tmp)
		for i := 0; i < n; i++ {
			out[i] += tmp[i]
		}
	}
	p.mu.Unlock()
	for i, v := range out {
		v = max(-1, min(1, v))
		out[i] = v
		p.winSum += float64(v) * float64(v)
	}
	p.winN += len(out)
	p.played.Add(uint64(len(out)))
	p.tap(out)
	if p.winN >= SampleRate/10 {
		e := math.Sqrt(p.winSum / float64(p.winN))
		p.energy.Store(math.Float64bits(e))
		if e > math.Float64frombits(p.peak.Load()) {
			p.peak.Store(math.Float64bits(e))
		}
		p.winSum, p.winN = 0, 0
	}
}

// Close stops the speaker and forgets every source.
func (p *Player) Close() {
	p.closed.Do(func() {
		close(p.stop)
		if p.dev != nil {
			_ = p.dev.Stop()
			p.dev.Uninit()
		}
		if p.ctx != nil {
			_ = p.ctx.Uninit()
			p.ctx.Free()
		}
		p.mu.Lock()
		for s := range p.sources {
			s.dec.close()
		}
		p.sources = map[*source]struct{}{}
		p.mu.Unlock()
	})
}

// source is one remote audio track's decoded samples waiting to be played.
// It starts after a little has been buffered, so network jitter does not
// become a crackle, and it drops the oldest sound when far behind, so the
// unit never lags the room by more than a fraction of a second.
type source struct {
	participant string
	dec         *opusDecoder
	mu          sync.Mutex
	q           []float32
	started     bool
	level       speechLevel // for Speaking
}

const (
	prebuffer = SampleRate * 40 / 1000
	maxQueue  = SampleRate * 250 / 1000
)

func (s *source) push(pcm []float32) {
	s.level.hear(pcm)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.q = append(s.q, pcm...)
	if len(s.q) > maxQueue {
		s.q = append(s.q[:0], s.q[len(s.q)-prebuffer:]...)
	}
}

func (s *source) take(out []float32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started {
		if len(s.q) < prebuffer {
			return 0
		}
		s.started = true
	}
	n := copy(out, s.q)
	s.q = append(s.q[:0], s.q[n:]...)
	if n < len(out) {
		s.started = false // ran dry: buffer again before going on
	}
	return n
}

// ErrClosed: the player has been closed (the call is over).
var ErrClosed = errors.New("playout: closed")

func f64(b uint64) float64 { return math.Float64frombits(b) }
