//go:build cgo && !upstreammic

package capture

// The unit's real microphone: ALSA through miniaudio (malgo, cgo),
// registered with mediadevices under the labels its own microphone driver
// gives (the device id in hex), so conference.microphone is unchanged.
//
// mediadevices' driver (pkg/driver/microphone, v0.9.4) is not used: its
// capture callback hands the reader a slice over miniaudio's own buffer
// and returns, and miniaudio reads the next period into that buffer while
// the reader may not have decoded the last one (pion/mediadevices issue
// 500, open). Whenever the reader is a chunk behind (a loaded unit, the
// echo canceller's CPU) chunks arrive twice or not at all and the
// microphone stream loses its sample timing: the QEMU lab's echo through
// snd-aloop came back with gaps the canceller could not follow (ERLE 4.4
// dB). Here the callback copies each chunk into a bounded queue and never
// waits, so ALSA's ring is drained on time whatever the reader does.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gen2brain/malgo"
	"github.com/pion/mediadevices/pkg/driver"
	"github.com/pion/mediadevices/pkg/io/audio"
	"github.com/pion/mediadevices/pkg/prop"
	"github.com/pion/mediadevices/pkg/wave"
)

// micQueue bounds the audio the microphone holds for a late reader (the
// device's chunks may be shorter than the 20 ms asked for). Past it the
// newest chunk is dropped and counted (MicrophoneChunksDropped).
const micQueue = 2 * time.Second

// micPeriods is the device's capture buffer, in periods.
const micPeriods = 25

var micDropped atomic.Uint64

// MicrophoneChunksDropped counts microphone chunks the ALSA driver dropped
// because the reader was more than micQueueChunks behind (each a gap in
// the microphone's audio).
func MicrophoneChunksDropped() uint64 { return micDropped.Load() }

// chunkQueue carries the capture callback's chunks to the reader: push
// copies and never blocks; pop waits.
type chunkQueue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	q       [][]byte
	free    [][]byte
	max     int // bytes
	held    int // bytes in q
	closed  bool
	dropped *atomic.Uint64
	warned  bool
}

func newChunkQueue(max int, dropped *atomic.Uint64) *chunkQueue {
	c := &chunkQueue{max: max, dropped: dropped}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// push copies b (the callback's buffer is reused after it returns).
func (c *chunkQueue) push(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if c.held+len(b) > c.max {
		c.dropped.Add(1)
		if !c.warned {
			c.warned = true
			slog.Warn("microphone: the reader is too far behind the device: chunks dropped (a gap in the audio)", "queue_bytes", c.max)
		}
		return
	}
	c.held += len(b)
	var cp []byte
	if n := len(c.free); n > 0 && cap(c.free[n-1]) >= len(b) {
		cp, c.free = c.free[n-1][:len(b)], c.free[:n-1]
	} else {
		cp = make([]byte, len(b))
	}
	copy(cp, b)
	c.q = append(c.q, cp)
	c.cond.Signal()
}

// pop returns the oldest chunk and a release that recycles its buffer;
// false once closed.
func (c *chunkQueue) pop() ([]byte, func(), bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.q) == 0 && !c.closed {
		c.cond.Wait()
	}
	if len(c.q) == 0 {
		return nil, nil, false
	}
	b := c.q[0]
	c.q[0] = nil
	c.q = c.q[1:]
	c.held -= len(b)
	release := func() {
		c.mu.Lock()
		if len(c.free) < 64 {
			c.free = append(c.free, b)
		}
		c.mu.Unlock()
	}
	return b, release, true
}

func (c *chunkQueue) close() {
	c.mu.Lock()
	c.closed = true
	c.q = nil
	c.cond.Broadcast()
	c.mu.Unlock()
}

var (
	micCtx        *malgo.AllocatedContext
	errMicFormat  = errors.New("microphone: the format is not supported (only float32 and int16)")
	micHostEndian = hostOrder()
)

func init() { registerMicrophones() }

// hostOrder is binary.LittleEndian or BigEndian as the host is: the
// decoder copies straight only for the one it compares equal.
func hostOrder() binary.ByteOrder {
	if binary.NativeEndian.Uint16([]byte{0x12, 0x34}) == 0x1234 {
		return binary.BigEndian
	}
	return binary.LittleEndian
}

// registerMicrophones registers every capture device miniaudio finds, the
// system default first, as mediadevices' own driver did.
func registerMicrophones() {
	var err error
	micCtx, err = malgo.InitContext(nil, malgo.ContextConfig{}, nil)
	if err != nil {
		slog.Warn("microphone: no audio context: no ALSA microphone can be opened", "err", err)
		return
	}
	devices, err := micCtx.Devices(malgo.Capture)
	if err != nil {
		slog.Warn("microphone: listing capture devices failed", "err", err)
		return
	}
	for _, d := range devices {
		info, err := micCtx.DeviceInfo(malgo.Capture, d.ID, malgo.Shared)
		if err != nil {
			continue
		}
		priority := driver.PriorityNormal
		if info.IsDefault > 0 {
			priority = driver.PriorityHigh
		}
		if err := driver.GetManager().Register(&alsaMic{info: info}, driver.Info{
			Label: d.ID.String(), DeviceType: driver.Microphone, Priority: priority, Name: info.Name(),
		}); err != nil {
			slog.Warn("microphone: registering a capture device failed", "name", info.Name(), "err", err)
		}
	}
}

// alsaMic is one capture device.
type alsaMic struct {
	info  malgo.DeviceInfo
	mu    sync.Mutex
	stops []func() // each AudioRecord's device, until Close
}

func (m *alsaMic) Open() error { return nil }

func (m *alsaMic) Close() error {
	m.mu.Lock()
	stops := m.stops
	m.stops = nil
	m.mu.Unlock()
	for _, f := range stops {
		f()
	}
	return nil
}

func (m *alsaMic) AudioRecord(p prop.Media) (audio.Reader, error) {
	dec, err := wave.NewDecoder(&wave.RawFormat{SampleSize: p.SampleSize, IsFloat: p.IsFloat, Interleaved: p.IsInterleaved})
	if err != nil {
		return nil, fmt.Errorf("microphone decoder: %w", err)
	}
	cfg := malgo.DefaultDeviceConfig(malgo.Capture)
	cfg.PerformanceProfile = malgo.LowLatency
	cfg.Capture.Channels = uint32(p.ChannelCount)
	cfg.SampleRate = uint32(p.SampleRate)
	cfg.PeriodSizeInMilliseconds = uint32(p.Latency.Milliseconds())
	// A capture buffer of 25 periods (500 ms at 20 ms): room for a late
	// device thread on a loaded unit. It adds no latency (a period is read
	// as soon as it is there); an overrun is a gap the canceller must
	// follow.
	cfg.Periods = micPeriods
	cfg.Capture.DeviceID = m.info.ID.Pointer()
	switch {
	case p.SampleSize == 4 && p.IsFloat:
		cfg.Capture.Format = malgo.FormatF32
	case p.SampleSize == 2 && !p.IsFloat:
		cfg.Capture.Format = malgo.FormatS16
	default:
		return nil, errMicFormat
	}
	q := newChunkQueue(int(micQueue.Seconds()*float64(p.SampleRate))*p.ChannelCount*p.SampleSize, &micDropped)
	dev, err := malgo.InitDevice(micCtx.Context, cfg, malgo.DeviceCallbacks{
		Data: func(_, in []byte, _ uint32) { q.push(in) },
	})
	if err != nil {
		return nil, fmt.Errorf("microphone %q: %w", m.info.Name(), err)
	}
	if err := dev.Start(); err != nil {
		dev.Uninit()
		return nil, fmt.Errorf("microphone %q start: %w", m.info.Name(), err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			q.close()
			dev.Uninit()
		})
	}
	m.mu.Lock()
	m.stops = append(m.stops, stop)
	m.mu.Unlock()
	return audio.ReaderFunc(func() (wave.Audio, func(), error) {
		b, release, ok := q.pop()
		if !ok {
			return nil, func() {}, io.EOF
		}
		a, err := dec.Decode(micHostEndian, b, p.ChannelCount)
		release() // Decode copies into its own wave.Audio
		if err != nil {
			return nil, func() {}, fmt.Errorf("microphone decode: %w", err)
		}
		switch a := a.(type) {
		case *wave.Float32Interleaved:
			a.Size.SamplingRate = p.SampleRate
		case *wave.Int16Interleaved:
			a.Size.SamplingRate = p.SampleRate
		}
		return a, func() {}, nil
	}), nil
}

// Properties: each format miniaudio reports at 48 kHz, interleaved, 20 ms
// chunks (as mediadevices' driver offered them).
func (m *alsaMic) Properties() []prop.Media {
	var out []prop.Media
	for _, f := range m.info.Formats {
		a := prop.Audio{ChannelCount: int(f.Channels), SampleRate: 48000, IsBigEndian: micHostEndian == binary.ByteOrder(binary.BigEndian),
			IsInterleaved: true, Latency: 20 * time.Millisecond}
		switch malgo.FormatType(f.Format) {
		case malgo.FormatF32:
			a.SampleSize, a.IsFloat = 4, true
		case malgo.FormatS16:
			a.SampleSize = 2
		default:
			continue
		}
		if a.ChannelCount == 0 {
			// Any channel count (a plug device; snd-aloop's capture side
			// before its playback side is open): mono, as the unit sends.
			a.ChannelCount = 1
		}
		out = append(out, prop.Media{Audio: a})
	}
	return out
}
