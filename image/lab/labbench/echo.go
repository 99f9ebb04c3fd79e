//go:build linux && (amd64 || arm64)

package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand"
	"sync"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/codec/openh264"
	"github.com/pion/mediadevices/pkg/codec/opus"
	"github.com/pion/mediadevices/pkg/io/audio"
	"github.com/pion/mediadevices/pkg/prop"
	"github.com/pion/mediadevices/pkg/wave"
	"github.com/pion/rtp"

	"github.com/konsult/konsult/media/audioproc"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/playout"
)

// The echo mode measures the unit's echo canceller on the lab's real echo
// path without a call: roomd's own speaker (media/playout, miniaudio on
// ALSA's "default", the dmix onto hw:Loopback,0,0) plays a known far end,
// decoded from Opus as a call's would be, with its exact mix tapped as the
// canceller's reference (audioproc.Tap, as appliance/unit wires it), and
// roomd's own microphone (media/capture through mediadevices' ALSA driver
// on the dsnoop over hw:Loopback,1,0, the privacy gate open, the canceller
// behind it) hears it back through snd-aloop. The canceller is wrapped
// only to read each chunk's energy before and after it.

type echoResult struct {
	Mode string `json:"mode"`
	// ERLE (dB) over the window: the echo's energy in the microphone over
	// what the canceller left, on chunks that carried echo.
	ERLE float64 `json:"erle_db"`
	// EchoDB is the echo's level in the microphone (dBFS, mean power over
	// the window's echo chunks); PlayedDB the far end's as played.
	EchoDB    float64         `json:"echo_dbfs"`
	LeftDB    float64         `json:"left_dbfs"`
	PlayedDB  float64         `json:"played_dbfs"`
	EchoFrac  float64         `json:"echo_chunks_fraction"` // of the window's chunks, those with echo
	Window    float64         `json:"window_s"`
	Settle    float64         `json:"settle_s"`
	MicSec    float64         `json:"mic_s"`        // microphone audio processed
	WallSec   float64         `json:"wall_s"`       // over this wall time
	RealTime  float64         `json:"mic_realtime"` // MicSec / WallSec
	Skipped   int             `json:"mic_skipped_samples"`
	Played    uint64          `json:"speaker_samples"`
	Speaker   string          `json:"speaker"`
	Proc      audioproc.Stats `json:"proc"`
	StaleDrop uint64          `json:"stale_dropped"`
	Chunks    int             `json:"mic_chunks"` // microphone chunks processed
	// Per second since the far end started: the microphone's and the
	// speaker mix's level (dBFS) and the microphone's seconds of audio.
	MicBySec    []float64 `json:"mic_dbfs_by_s,omitempty"`
	MixBySec    []float64 `json:"mix_dbfs_by_s,omitempty"`
	MicSecBySec []float64 `json:"mic_s_by_s,omitempty"`
	Error       string    `json:"error,omitempty"`
}

// chunkEnergy is one microphone chunk through the canceller.
type chunkEnergy struct {
	at      time.Duration // since the far end started
	n       int
	in, out float64 // mean power
}

// meter is the unit's processor with each chunk's energy read around it.
type meter struct {
	p       *audioproc.Processor
	started time.Time // the far end's start
	// record: the devices' audio is recorded in real time and the
	// canceller runs over it after (see echo's offline).
	record bool
	events []event

	mu      sync.Mutex
	first   time.Time
	last    time.Time
	samples int
	nchunks int
	skipped int
	chunks  []chunkEnergy
}

func (m *meter) Process(pcm []float32, rate int) error {
	if m.record {
		// Recorded, processed after: in order with the speaker's mix.
		now := time.Now()
		m.mu.Lock()
		defer m.mu.Unlock()
		m.count(now, len(pcm))
		m.events = append(m.events, event{at: now, rate: rate, pcm: append([]float32(nil), pcm...)})
		return nil
	}
	in := power(pcm)
	err := m.p.Process(pcm, rate)
	out := power(pcm)
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.count(now, len(pcm))
	if !m.started.IsZero() {
		m.chunks = append(m.chunks, chunkEnergy{at: now.Sub(m.started), n: len(pcm), in: in, out: out})
	}
	return err
}

func (m *meter) count(now time.Time, n int) {
	if m.first.IsZero() {
		m.first = now
	}
	m.last = now
	m.samples += n
	m.nchunks++
}

// render is the speaker's mix tap: straight to the canceller, or recorded.
func (m *meter) render(mix []float32) {
	if !m.record {
		m.p.Render(mix)
		return
	}
	m.mu.Lock()
	m.events = append(m.events, event{render: true, at: time.Now(), pcm: append([]float32(nil), mix...)})
	m.mu.Unlock()
}

// replay runs the canceller over the recording, in the order the two
// devices delivered it.
func (m *meter) replay() {
	for _, e := range m.events {
		switch {
		case e.render:
			m.p.Render(e.pcm)
		case e.skip > 0:
			m.p.Skip(e.skip)
		default:
			in := power(e.pcm)
			_ = m.p.Process(e.pcm, e.rate)
			if !m.started.IsZero() {
				m.chunks = append(m.chunks, chunkEnergy{at: e.at.Sub(m.started), n: len(e.pcm), in: in, out: power(e.pcm)})
			}
		}
	}
}

// event is one recorded call of the microphone or the speaker's tap.
type event struct {
	render bool
	skip   int
	at     time.Time
	rate   int
	pcm    []float32
}

func (m *meter) Reset() {
	if !m.record {
		m.p.Reset()
	}
}

func (m *meter) Skip(n int) {
	m.mu.Lock()
	m.skipped += n
	if m.record {
		m.events = append(m.events, event{skip: n})
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	m.p.Skip(n)
}

func (m *meter) start() {
	m.mu.Lock()
	m.started = time.Now()
	m.mu.Unlock()
}

func power(x []float32) float64 {
	if len(x) == 0 {
		return 0
	}
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return s / float64(len(x))
}

func db(p float64) float64 { return 10 * math.Log10(p+1e-20) }

// farEnd is speech-like noise: low-passed white noise at about -20 dBFS
// RMS, in syllables (a 3 Hz envelope) with a pause every second, as a
// talker's. Deterministic.
func farEnd(d time.Duration) []float32 {
	n := int(d.Seconds() * playout.SampleRate)
	out := make([]float32, n)
	r := rand.New(rand.NewSource(20))
	var lp float64
	for i := range out {
		t := float64(i) / playout.SampleRate
		lp += 0.35 * (r.NormFloat64() - lp)
		env := 0.4 + 0.6*math.Abs(math.Sin(math.Pi*3*t))
		if math.Mod(t, 1) > 0.85 {
			env = 0
		}
		out[i] = float32(0.2 * env * lp)
	}
	return out
}

// opusPackets encodes pcm as a call's far end sends it: 20 ms Opus frames.
func opusPackets(pcm []float32) ([][]byte, error) {
	p, err := opus.NewParams()
	if err != nil {
		return nil, fmt.Errorf("opus params: %w", err)
	}
	p.BitRate = 64000
	const chunk = playout.SampleRate / 50
	i := 0
	src := audio.ReaderFunc(func() (wave.Audio, func(), error) {
		if i+chunk > len(pcm) {
			return nil, func() {}, io.EOF
		}
		a := wave.NewFloat32Interleaved(wave.ChunkInfo{Channels: 1, Len: chunk, SamplingRate: playout.SampleRate})
		copy(a.Data, pcm[i:i+chunk])
		i += chunk
		return a, func() {}, nil
	})
	enc, err := p.BuildAudioEncoder(src, prop.Media{Audio: prop.Audio{SampleRate: playout.SampleRate, ChannelCount: 1}})
	if err != nil {
		return nil, fmt.Errorf("opus encoder: %w", err)
	}
	defer enc.Close()
	var out [][]byte
	for {
		b, release, err := enc.Read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("opus encode: %w", err)
		}
		out = append(out, append([]byte(nil), b...))
		release()
	}
}

// pacedTrack hands the packets over as the network would: one per 20 ms.
type pacedTrack struct { // one source's packets, in order
	pkts [][]byte
	i    int
	next time.Time
}

func (t *pacedTrack) ReadRTP() (*rtp.Packet, interceptor.Attributes, error) {
	if t.i >= len(t.pkts) {
		return nil, nil, io.EOF
	}
	if t.next.IsZero() {
		t.next = time.Now()
	}
	time.Sleep(time.Until(t.next))
	t.next = t.next.Add(20 * time.Millisecond)
	p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: uint16(t.i), Timestamp: uint32(t.i * 960)}, Payload: t.pkts[t.i]}
	t.i++
	return p, nil, nil
}

func echo(mic, speaker string, settle, window time.Duration, offline bool) echoResult {
	mode := "live"
	if offline {
		mode = "recorded"
	}
	res := echoResult{Mode: mode, Settle: settle.Seconds(), Window: window.Seconds()}
	fail := func(err error) echoResult { res.Error = err.Error(); return res }
	// As appliance/unit: [audio] aec on (the lab's echo config), ns and agc
	// off, so what is measured is the canceller's own work.
	proc, err := audioproc.New(audioproc.Config{EchoCancel: true, Rate: playout.SampleRate, Log: slog.Default()})
	if err != nil {
		return fail(err)
	}
	defer proc.Close()
	m := &meter{p: proc, record: offline}

	// Three seconds of far end, encoded once (Opus is slow under TCG) and
	// played over and over for as long as the measure runs.
	sig := farEnd(3 * time.Second)
	once, err := opusPackets(sig)
	if err != nil {
		return fail(err)
	}
	var pkts [][]byte
	for len(pkts)*20 < int((settle+window+time.Second)/time.Millisecond) {
		pkts = append(pkts, once...)
	}
	res.PlayedDB = db(power(sig))

	g := gate.New()
	g.Set(gate.State{Audio: true})
	vb, err := openh264.NewParams() // the test camera's track is never read
	if err != nil {
		return fail(err)
	}
	ab, err := opus.NewParams()
	if err != nil {
		return fail(err)
	}
	c, err := capture.Open(capture.Config{Gate: g, Width: 640, Height: 480, FPS: 30, Camera: capture.TestDevice, Microphone: mic,
		Video: &vb, Audio: &ab, Processor: m})
	if err != nil {
		return fail(fmt.Errorf("capture: %w", err))
	}
	defer c.Close()
	var r audio.Reader
	for _, t := range c.Tracks() {
		if at, ok := t.(*mediadevices.AudioTrack); ok {
			r = at.NewReader(false)
		}
	}
	if r == nil {
		return fail(errors.New("capture has no microphone track"))
	}
	done := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-done:
				readErr <- nil
				return
			default:
			}
			_, release, err := r.Read()
			if err != nil {
				readErr <- err
				return
			}
			release()
		}
	}()

	p, err := playout.Open(playout.Config{Device: speaker, OnMix: m.render, Log: slog.Default()})
	if err != nil {
		close(done)
		return fail(fmt.Errorf("speaker: %w", err))
	}
	res.Speaker = p.Device()
	// Let the microphone run a moment on silence first, as in a call.
	time.Sleep(500 * time.Millisecond)
	m.start()
	played := make(chan error, 1)
	go func() { played <- p.PlayAudio("far-end", &pacedTrack{pkts: pkts}) }()
	select {
	case err = <-played:
	case err = <-readErr:
		if err == nil {
			err = errors.New("microphone reader stopped")
		}
		err = fmt.Errorf("microphone: %w", err)
	}
	time.Sleep(300 * time.Millisecond) // the echo's tail
	st := p.Stats()
	p.Close()
	c.Stop(2 * time.Second)
	close(done)
	if err != nil {
		return fail(err)
	}
	res.Played = st.SamplesPlayed
	res.Proc = proc.Stats()
	res.StaleDrop = c.Counters.StaleDropped.Load()

	m.mu.Lock()
	defer m.mu.Unlock()
	if offline {
		m.replay()
		res.Proc = proc.Stats()
		secs := int(settle/time.Second + window/time.Second + 2)
		mic, mix, micN, mixN := make([]float64, secs), make([]float64, secs), make([]float64, secs), make([]float64, secs)
		for _, e := range m.events {
			k := int(e.at.Sub(m.started) / time.Second)
			if e.skip > 0 || k < 0 || k >= secs {
				continue
			}
			if e.render {
				mix[k] += power(e.pcm) * float64(len(e.pcm))
				mixN[k] += float64(len(e.pcm))
			} else {
				mic[k] += power(e.pcm) * float64(len(e.pcm))
				micN[k] += float64(len(e.pcm))
			}
		}
		for k := range mic {
			res.MicBySec = append(res.MicBySec, math.Round(db(mic[k]/max(micN[k], 1))))
			res.MixBySec = append(res.MixBySec, math.Round(db(mix[k]/max(mixN[k], 1))))
			res.MicSecBySec = append(res.MicSecBySec, micN[k]/playout.SampleRate)
		}
	}
	wall := m.last.Sub(m.first)
	res.MicSec = float64(m.samples) / playout.SampleRate
	res.WallSec = wall.Seconds()
	if wall > 0 {
		res.RealTime = res.MicSec / res.WallSec
	}
	res.Skipped = m.skipped
	res.Chunks = m.nchunks
	var in, out float64
	var all, withEcho, ns int
	for _, ch := range m.chunks {
		if ch.at < settle || ch.at >= settle+window {
			continue
		}
		all++
		if ch.in < 1e-6 { // under -60 dBFS: a pause, no echo to judge
			continue
		}
		withEcho++
		in += ch.in * float64(ch.n)
		out += ch.out * float64(ch.n)
		ns += ch.n
	}
	if all > 0 {
		res.EchoFrac = float64(withEcho) / float64(all)
	}
	if withEcho == 0 {
		res.Error = fmt.Sprintf("no echo in the microphone over the window (%d chunks): the loopback echo path is not working", all)
		return res
	}
	res.ERLE = math.Round(10*(db(in)-db(out))) / 10
	res.EchoDB = math.Round(10*db(in/float64(ns))) / 10
	res.LeftDB = math.Round(10*db(out/float64(ns))) / 10
	res.PlayedDB = math.Round(10*res.PlayedDB) / 10
	return res
}
