//go:build linux && (amd64 || arm64)

package main

import (
	"testing"
	"time"
)

// The delay per second follows a gap in the microphone's stream: 30 ms of
// echo lost at 3 s moves the delay from 50 to 20 ms from then on.
func TestDelaysSeeAGap(t *testing.T) {
	sig := farEnd(6 * time.Second)
	const chunk = 960
	d := 50 * 48 // 50 ms
	var events []event
	mic := append(make([]float32, d), sig...)
	mic = append(mic[:3*48000:3*48000], mic[3*48000+30*48:]...) // 30 ms lost
	for i := 0; i+chunk <= len(sig) && i+chunk <= len(mic); i += chunk {
		events = append(events, event{render: true, pcm: sig[i : i+chunk]})
		events = append(events, event{pcm: mic[i : i+chunk]})
	}
	got, spread := delays(events)
	if len(got) < 5 {
		t.Fatalf("delays: %v", got)
	}
	// The first mic chunk arrives after one mix chunk was written (the
	// nominal position is 20 ms ahead): 70 ms, then 40 ms after the gap;
	// the first second cannot try every lag.
	for i, want := range []float64{-1, 70, 70, 40, 40} {
		if got[i] != want {
			t.Errorf("second %d: delay %v ms, want %v (all %v)", i, got[i], want, got)
		}
	}
	if spread != 30 {
		t.Errorf("spread %v ms, want 30 (%v)", spread, got)
	}
}
