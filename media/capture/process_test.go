package capture

import (
	"sync"
	"testing"
	"time"

	"github.com/pion/mediadevices/pkg/io/audio"
	"github.com/pion/mediadevices/pkg/wave"

	"github.com/konsult/konsult/media/gate"
)

// spyProcessor records what reaches it and checks, on every chunk, that
// the gate admits audio at that moment.
type spyProcessor struct {
	g         *gate.Gate
	mu        sync.Mutex
	chunks    int
	resets    int
	whileShut int
	// sinceReset: chunks processed since the last reset.
	sinceReset int
}

func (s *spyProcessor) Process(pcm []float32, rate int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.g.State().Audio {
		s.whileShut++
	}
	s.chunks++
	s.sinceReset++
	for i := range pcm {
		pcm[i] *= 0.5
	}
	return nil
}

func (s *spyProcessor) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resets++
	s.sinceReset = 0
}

func (s *spyProcessor) Skip(int) {}

// mic is a microphone at real pace: 20 ms chunks of a constant 0.5.
func mic() audio.Reader {
	next := time.Now()
	return audio.ReaderFunc(func() (wave.Audio, func(), error) {
		time.Sleep(time.Until(next))
		next = next.Add(20 * time.Millisecond)
		a := wave.NewFloat32Interleaved(wave.ChunkInfo{Channels: 1, Len: 960, SamplingRate: 48000})
		for i := range a.Data {
			a.Data[i] = 0.5
		}
		return a, func() {}, nil
	})
}

// The processor sees only what the gate admits, never a chunk while the
// gate is shut, and is reset on every close before the next chunk; what it
// returns is what is sent.
func TestProcessorBehindTheGate(t *testing.T) {
	g := gate.New()
	done := make(chan struct{})
	defer close(done)
	spy := &spyProcessor{g: g}
	var n Counters
	r := gateAudio(g, done, &n, nil, spy)(mic())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var sent, bad int
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			a, _, err := r.Read()
			if err != nil {
				return
			}
			v := a.(*wave.Float32Interleaved).Data[0]
			if v != 0 && v != 0.25 {
				bad++ // neither silence nor the processed microphone
			}
			if v != 0 {
				sent++
			}
		}
	}()
	for i := 0; i < 5; i++ {
		g.Set(gate.State{Video: true, Audio: true})
		time.Sleep(150 * time.Millisecond)
		g.Set(gate.State{Video: true})
		time.Sleep(100 * time.Millisecond)
	}
	// Shut and open again faster than a chunk: a close all the same.
	g.Set(gate.State{Video: true, Audio: true})
	time.Sleep(100 * time.Millisecond)
	spy.mu.Lock()
	before := spy.resets
	spy.mu.Unlock()
	g.Set(gate.State{})
	g.Set(gate.State{Video: true, Audio: true})
	time.Sleep(100 * time.Millisecond)
	close(stop)
	g.Set(gate.State{})
	wg.Wait()
	spy.mu.Lock()
	defer spy.mu.Unlock()
	t.Logf("processed %d chunks, %d resets, %d sent; %d stale dropped", spy.chunks, spy.resets, sent, n.StaleDropped.Load())
	if spy.whileShut != 0 {
		t.Errorf("%d chunks reached the processor while the gate was shut", spy.whileShut)
	}
	if bad != 0 {
		t.Errorf("%d chunks sent that the processor had not made", bad)
	}
	if spy.resets < 5 {
		t.Errorf("%d resets for 5 closes", spy.resets)
	}
	if spy.resets == before {
		t.Errorf("a close and open between two chunks did not reset the processor")
	}
	if spy.chunks == 0 || sent == 0 {
		t.Errorf("nothing processed (%d) or sent (%d)", spy.chunks, sent)
	}
}
