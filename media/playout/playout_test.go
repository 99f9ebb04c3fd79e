package playout

import (
	"math"
	"testing"
	"time"
)

// Without a sound card the null device still plays in real time: the mix is
// pulled at 48 kHz, and what two people say at once is heard (summed).
func TestNullDeviceMixesInRealTime(t *testing.T) {
	p, err := Open(Config{Device: DeviceNull})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	t.Logf("speaker: %s", p.Device())
	a, b := &source{}, &source{}
	p.mu.Lock()
	p.sources[a], p.sources[b] = struct{}{}, struct{}{}
	p.mu.Unlock()
	tone := make([]float32, SampleRate)
	for i := range tone {
		tone[i] = float32(0.2 * math.Sin(2*math.Pi*440*float64(i)/SampleRate))
	}
	// As the network delivers it: one 20 ms Opus frame at a time.
	for i := 0; i+960 <= len(tone) && i < SampleRate*6/10; i += 960 {
		a.push(tone[i : i+960])
		b.push(tone[i : i+960])
		time.Sleep(20 * time.Millisecond)
	}
	st := p.Stats()
	if st.SamplesPlayed < SampleRate/10 {
		t.Fatalf("null device played %d samples in 600 ms; want about %d", st.SamplesPlayed, SampleRate*6/10)
	}
	// Two in-phase tones of RMS 0.141 mix to RMS 0.283.
	t.Logf("%+v", st)
	if st.EnergyPeak < 0.25 || st.EnergyPeak > 0.3 {
		t.Fatalf("mix energy peak %.3f; want ~0.28 (two voices summed)", st.EnergyPeak)
	}
}
