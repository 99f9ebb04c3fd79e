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
// on a plug over hw:Loopback,1,0, the privacy gate open, the canceller
// behind it) hears it back through snd-aloop. The canceller is wrapped
// only to read each chunk's energy before and after it.

type echoResult struct {
	Mode string `json:"mode"`
	// ERLE (dB) over the window: the echo's energy in the microphone over
	// what the canceller left, on chunks that carried echo.
	ERLE float64 `json:"erle_db"`
	// ERLENoTrack: the same recording through the canceller with its delay
	// tracker off (audioproc.Config.NoTrack), recorded mode only.
	ERLENoTrack float64 `json:"erle_notrack_db"`
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
	LeftBySec   []float64 `json:"left_dbfs_by_s,omitempty"` // after the canceller
	MixBySec    []float64 `json:"mix_dbfs_by_s,omitempty"`
	MicSecBySec []float64 `json:"mic_s_by_s,omitempty"`
	// DelayBySec is the echo's delay per second of microphone audio (ms,
	// from the cross-correlation of the two recordings' 1 ms envelopes):
	// the sample lag between the speaker's mix and the microphone, which
	// stays put unless one of the devices' streams has a gap. Its spread
	// is the largest minus the smallest.
	DelayBySec  []float64 `json:"delay_ms_by_s,omitempty"`
	DelaySpread float64   `json:"delay_spread_ms"`
	// Repeated: microphone chunks identical to the one before (not
	// silence): the reader got the device's buffer after it was refilled
	// (pion/mediadevices issue 500), a chunk twice and another never.
	Repeated int `json:"mic_chunks_repeated"`
	// DriverDropped: chunks the microphone driver dropped for a late reader
	// (capture.MicrophoneChunksDropped).
	DriverDropped uint64 `json:"mic_driver_dropped"`
	Error         string `json:"error,omitempty"`
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
			// A copy: the recording stays as the microphone gave it, for
			// the next replay and the delay estimate.
			pcm := append([]float32(nil), e.pcm...)
			in := power(pcm)
			_ = m.p.Process(pcm, e.rate)
			if !m.started.IsZero() {
				m.chunks = append(m.chunks, chunkEnergy{at: e.at.Sub(m.started), n: len(pcm), in: in, out: power(pcm)})
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
	res.DriverDropped = capture.MicrophoneChunksDropped()

	m.mu.Lock()
	defer m.mu.Unlock()
	if offline {
		m.replay()
		res.Proc = proc.Stats()
		if p2, err := audioproc.New(audioproc.Config{EchoCancel: true, Rate: playout.SampleRate, NoTrack: true, Log: slog.Default()}); err == nil {
			m2 := &meter{p: p2, started: m.started, events: m.events}
			m2.replay()
			p2.Close()
			res.ERLENoTrack, _, _, _ = erleOf(m2.chunks, settle, window)
		}
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
		res.DelayBySec, res.DelaySpread = delays(m.events)
		res.Repeated = repeated(m.events)
		left, leftN := make([]float64, secs), make([]float64, secs)
		for _, ch := range m.chunks {
			if k := int(ch.at / time.Second); k >= 0 && k < secs {
				left[k] += ch.out * float64(ch.n)
				leftN[k] += float64(ch.n)
			}
		}
		for k := range left {
			res.LeftBySec = append(res.LeftBySec, math.Round(db(left[k]/max(leftN[k], 1))))
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
	var all int
	res.ERLE, res.EchoDB, res.LeftDB, all = erleOf(m.chunks, settle, window)
	if all < 0 {
		res.Error = fmt.Sprintf("no echo in the microphone over the window (%d chunks): the loopback echo path is not working", -all-1)
		return res
	}
	res.EchoFrac = float64(all) / 1e6
	res.PlayedDB = math.Round(10*res.PlayedDB) / 10
	return res
}

// erleOf is the ERLE over the window's chunks with echo, the echo's and
// what was left's level, and the fraction of the window's chunks with echo
// (in millionths; negative, -chunks-1, with no echo at all).
func erleOf(chunks []chunkEnergy, settle, window time.Duration) (erle, echoDB, leftDB float64, frac int) {
	var in, out float64
	var all, withEcho, ns int
	for _, ch := range chunks {
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
	if withEcho == 0 {
		return 0, 0, 0, -all - 1
	}
	erle = math.Round(10*(db(in)-db(out))) / 10
	echoDB = math.Round(10*db(in/float64(ns))) / 10
	leftDB = math.Round(10*db(out/float64(ns))) / 10
	return erle, echoDB, leftDB, withEcho * 1e6 / all
}

// repeated counts microphone chunks equal to the one before, silence
// aside.
func repeated(events []event) int {
	var prev []float32
	n := 0
	for _, e := range events {
		if e.render || e.skip > 0 {
			continue
		}
		if len(prev) == len(e.pcm) && power(e.pcm) > 1e-8 {
			same := true
			for i := range prev {
				if prev[i] != e.pcm[i] {
					same = false
					break
				}
			}
			if same {
				n++
			}
		}
		prev = e.pcm
	}
	return n
}

// envelope is the mean absolute value of each block of b samples.
func envelope(x []float32, b int) []float64 {
	out := make([]float64, len(x)/b)
	for i := range out {
		var s float64
		for _, v := range x[i*b : (i+1)*b] {
			s += math.Abs(float64(v))
		}
		out[i] = s / float64(b)
	}
	return out
}

// delays estimates the echo's delay in each second of microphone audio:
// the lag (in 1 ms envelope blocks) at which the speaker's mix best
// matches it, searched from 0 to 400 ms after the position the microphone
// would have on the mix's clock with no gap in either stream. It returns
// the delays in ms (-1 where the second has no echo to match) and their
// spread.
func delays(events []event) ([]float64, float64) {
	const blk = playout.SampleRate / 1000 // 1 ms
	var mic, ref []float32
	// base: the mix's samples written when the first microphone chunk after
	// the speaker's start arrived, less the microphone's before it.
	base, started, haveBase := 0, false, false
	for _, e := range events {
		switch {
		case e.render:
			ref = append(ref, e.pcm...)
			started = true
		case e.skip > 0:
			mic = append(mic, make([]float32, e.skip)...)
		default:
			if !haveBase && started {
				base, haveBase = len(ref)-len(mic), true
			}
			mic = append(mic, e.pcm...)
		}
	}
	if !haveBase {
		return nil, 0
	}
	me, re := envelope(mic, blk), envelope(ref, blk)
	b0 := base / blk // may be negative: the microphone started first
	// The microphone's first chunk arrived a chunk after its first sample
	// was captured: search from 200 ms before the nominal position.
	const lo, hi, win = -200, 600, 1000
	var out []float64
	minD, maxD := math.Inf(1), math.Inf(-1)
	for w := 0; (w+1)*win <= len(me); w++ {
		seg := me[w*win : (w+1)*win]
		var mean, e2 float64
		for _, v := range seg {
			mean += v
		}
		mean /= win
		for _, v := range seg {
			e2 += (v - mean) * (v - mean)
		}
		if mean < 1e-3 {
			out = append(out, -1)
			continue
		}
		if b0+w*win-hi < 0 || b0+w*win-lo+win > len(re) {
			out = append(out, -1) // not every lag can be tried
			continue
		}
		best, bestLag := math.Inf(-1), 0
		for lag := lo; lag <= hi; lag++ {
			st := b0 + w*win - lag
			r := re[st : st+win]
			var rm, r2, c float64
			for _, v := range r {
				rm += v
			}
			rm /= win
			for i, v := range r {
				c += (seg[i] - mean) * (v - rm)
				r2 += (v - rm) * (v - rm)
			}
			if r2 == 0 || e2 == 0 {
				continue
			}
			if cc := c / math.Sqrt(r2*e2); cc > best {
				best, bestLag = cc, lag
			}
		}
		if best < 0.3 { // nothing that matches: gaps or no echo
			out = append(out, -1)
			continue
		}
		d := float64(bestLag)
		out = append(out, d)
		minD, maxD = math.Min(minD, d), math.Max(maxD, d)
	}
	if math.IsInf(minD, 1) {
		return out, 0
	}
	return out, maxD - minD
}
