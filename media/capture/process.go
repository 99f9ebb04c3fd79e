package capture

import (
	"log/slog"

	"github.com/pion/mediadevices/pkg/io/audio"
	"github.com/pion/mediadevices/pkg/wave"

	"github.com/konsult/konsult/media/gate"
)

// AudioProcessor cleans the microphone after the privacy gate: echo
// cancellation, noise suppression, gain control (audioproc.Processor).
// Process works in place on mono samples; Reset forgets every sample held;
// Skip says a chunk of n samples was captured and dropped unsent (backlog),
// so the echo reference skips the same time and stays aligned.
type AudioProcessor interface {
	Process(pcm []float32, rate int) error
	Reset()
	Skip(n int)
}

// RoomEcho is the simulated room (audioproc.EchoPath): AddTo adds, to one
// mono microphone chunk, the echo of what the speaker played.
type RoomEcho interface {
	AddTo(mic []float32)
}

// micProc runs the processor on what the gate admits, and only that. It is
// used by one audio pipeline's goroutine.
type micProc struct {
	p    AudioProcessor
	seen <-chan struct{} // the gate's Changed when the last chunk went in
	shut bool
	buf  []float32
	warn bool
}

// closed: the gate is shut. The processor forgets what it holds, once per
// close, before any sample from after the close can reach it.
func (m *micProc) closed() {
	if m.p == nil || m.shut {
		return
	}
	m.p.Reset()
	m.shut = true
}

// admitted processes a chunk the gate has just admitted; the caller still
// holds the gate, so a close waits for it. A gate that closed and opened
// again since the last chunk (too quickly for the shut branch to see) is a
// close too: reset first.
func (m *micProc) admitted(g *gate.Gate, chunk wave.Audio) {
	if m.p == nil {
		return
	}
	cur := g.Changed()
	if m.seen != nil && m.seen != cur && !m.shut {
		m.p.Reset()
	}
	m.seen, m.shut = cur, false
	info := chunk.ChunkInfo()
	m.buf = toMono(chunk, m.buf)
	if err := m.p.Process(m.buf, info.SamplingRate); err != nil {
		if !m.warn {
			m.warn = true
			slog.Warn("microphone sent unprocessed", "err", err)
		}
		return
	}
	fromMono(chunk, m.buf)
}

// dropped: a chunk the gate admitted as live is dropped as backlog.
func (m *micProc) dropped(chunk wave.Audio) {
	if m.p != nil {
		m.p.Skip(chunk.ChunkInfo().Len)
	}
}

// withRoom adds the simulated room's echo to every microphone chunk, before
// the gate: it is what the microphone hears.
func withRoom(room RoomEcho) audio.TransformFunc {
	return func(r audio.Reader) audio.Reader {
		var buf []float32
		return audio.ReaderFunc(func() (wave.Audio, func(), error) {
			chunk, release, err := r.Read()
			if err != nil || room == nil {
				return chunk, release, err
			}
			// The simulated microphone's channels are one tone: the room
			// works on it mono and every channel gets the result.
			buf = toMono(chunk, buf)
			room.AddTo(buf)
			fromMono(chunk, buf)
			return chunk, release, nil
		})
	}
}

// toMono is chunk's channels averaged, as float samples in [-1, 1].
func toMono(chunk wave.Audio, buf []float32) []float32 {
	info := chunk.ChunkInfo()
	buf = append(buf[:0], make([]float32, info.Len)...)
	if info.Channels <= 0 {
		return buf
	}
	switch a := chunk.(type) {
	case *wave.Float32Interleaved:
		for i := range buf {
			var s float32
			for c := 0; c < info.Channels; c++ {
				s += a.Data[i*info.Channels+c]
			}
			buf[i] = s / float32(info.Channels)
		}
	case *wave.Int16Interleaved:
		for i := range buf {
			var s float32
			for c := 0; c < info.Channels; c++ {
				s += float32(a.Data[i*info.Channels+c]) / 32768
			}
			buf[i] = s / float32(info.Channels)
		}
	default:
		for i := range buf {
			var s float32
			for c := 0; c < info.Channels; c++ {
				s += float32(wave.Float32SampleFormat.Convert(chunk.At(i, c)).(wave.Float32Sample))
			}
			buf[i] = s / float32(info.Channels)
		}
	}
	return buf
}

// fromMono writes mono into every channel of chunk.
func fromMono(chunk wave.Audio, mono []float32) {
	info := chunk.ChunkInfo()
	switch a := chunk.(type) {
	case *wave.Float32Interleaved:
		for i, v := range mono {
			for c := 0; c < info.Channels; c++ {
				a.Data[i*info.Channels+c] = v
			}
		}
	case *wave.Int16Interleaved:
		for i, v := range mono {
			for c := 0; c < info.Channels; c++ {
				a.Data[i*info.Channels+c] = clip16(v)
			}
		}
	default:
		if e, ok := chunk.(wave.EditableAudio); ok {
			for i, v := range mono {
				for c := 0; c < info.Channels; c++ {
					e.Set(i, c, wave.Float32Sample(v))
				}
			}
		}
	}
}

func clip16(v float32) int16 {
	x := v * 32768
	switch {
	case x >= 32767:
		return 32767
	case x <= -32768:
		return -32768
	}
	return int16(x)
}
