package farend

import "time"

// Signal is a known sound the far end publishes as its microphone (the
// patient talking), for echo tests: speech-like noise (white noise through
// a band-pass around 1.5 kHz, in 4 Hz syllables), Level its peak RMS
// (0..1), starting After the page has published and, if Talk is set,
// talking Talk then pausing Talk over and over.
type Signal struct {
	Level float64
	After time.Duration
	Talk  time.Duration
}

// PublishSignal makes the far end publish s as its only track (no camera).
func PublishSignal(s Signal) Option {
	return func(c *config) { c.publish, c.signal = true, &s }
}

// MeasureBands makes the page measure, in the audio it receives, the power
// in SignalBand (where Signal's energy is, away from the unit's 480 Hz test
// tone) and at ToneHz, every report (AudioBands).
func MeasureBands() Option { return func(c *config) { c.bands = true } }

// SignalBand is the band, in Hz, MeasureBands sums as the far end's signal.
var SignalBand = [2]float64{700, 4000}

// ToneHz is the unit's simulated microphone tone (mediadevices' audiotest).
const ToneHz = 480

// BandSample is one report's measure of the received audio: mean powers
// (dB relative to full scale) since the report before, of SignalBand and of
// the ToneHz bins. Talking says whether the page's own Signal was on.
type BandSample struct {
	At      time.Time
	BandDB  float64
	ToneDB  float64
	Talking bool
}

type pageBands struct {
	Band    float64 `json:"band"`
	Tone    float64 `json:"tone"`
	N       int     `json:"n"`
	Talking bool    `json:"talking"`
}

// AudioBands are the band measures so far, oldest first (MeasureBands).
func (f *FarEnd) AudioBands() []BandSample {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]BandSample(nil), f.bands...)
}

func (f *FarEnd) addBands(at time.Time, b *pageBands) {
	if b == nil || b.N == 0 {
		return
	}
	f.bands = append(f.bands, BandSample{At: at, BandDB: b.Band, ToneDB: b.Tone, Talking: b.Talking})
	if len(f.bands) > 20000 {
		f.bands = f.bands[1:] // a test that forgot to stop
	}
}
