// Package slatesoak presses PRIVACY again and again on a unit in a call and
// judges, from every frame the far end's browser presented, whether the far
// end went to the privacy slate in time and stayed there, and whether a room
// frame captured after the press was ever shown. Test support for the
// privacy-slate tests (issue 15); loss comes from internal/lossynet.
package slatesoak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/lossynet"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
)

// Bound is the requirement: every far end is on the slate within
// this time of the (debounced) press, and stays on it.
const Bound = time.Second

// Private is how long each press keeps the unit private: longer than Bound,
// so "stays on it" is seen for a while after the bound.
const Private = 1800 * time.Millisecond

// EnvPresses sets how many presses each phase of a soak makes (default: the
// numbers the tests pass, at least 20 at 5 % loss).
const EnvPresses = "KONSULT_SLATE_PRESSES"

// Presses is n, or EnvPresses if set (a longer soak).
func Presses(n int) int {
	if v, err := strconv.Atoi(os.Getenv(EnvPresses)); err == nil && v > 0 {
		return v
	}
	return n
}

// Press is one PRIVACY press and what the far end showed for it.
type Press struct {
	// At is just before the gate is told to shut, Shut once it has (frames
	// already admitted are encoded by then), Reopen when it opens again.
	At, Shut, Reopen time.Time
	Phase

	// Converged is when, after the press, the far end showed the slate for
	// good (no room frame after it until the reopen); -1: never.
	Converged time.Duration
	// LateRoom counts room frames shown later than At+Bound.
	LateRoom int
	// RoomAfter counts room frames shown after the press (the encoder's
	// last frames still on their way); their stamps must all predate At.
	RoomAfter int
	// StampAfterPress counts room frames shown whose capture stamp is at or
	// after the press; NoStamp those whose stamp did not read back.
	StampAfterPress, NoStamp int
	// AudioBefore is the far end's audio energy (RMS, 0..1) just before
	// the press; AudioPrivate the highest it reported from AudioSettle
	// after the press until the reopen (the room's sound, or silence).
	AudioBefore, AudioPrivate float64
	// AudioPrivatePage is AudioPrivate from reports that also show a
	// frame presented at least AudioSettle after the press (page time): a
	// report the test received late does not count there. Reported, not
	// judged: it tells a late report from sound the page played late.
	AudioPrivatePage float64
	// SentLoud counts the frames of room sound the unit coded while shut
	// (Sent.loud), of SentAll frames it coded then (-1: not recorded). Judged: the unit must send
	// no room sound while muted or private, whatever the far end plays.
	SentLoud, SentAll int
	// LastRoomStamp is the capture stamp of the last room frame shown
	// before the slate held, as ms before the press (-1: unreadable).
	LastRoomStampAge time.Duration
}

// OK says whether the press met the requirement. A MUTE press is judged by
// its sound only: the picture goes on.
func (p Press) OK() bool {
	if p.SentLoud > 0 {
		return false
	}
	if p.Mute {
		return p.AudioPrivate < Silent
	}
	return p.Converged >= 0 && p.Converged <= Bound && p.LateRoom == 0 && p.StampAfterPress == 0 && (p.NoStamp == 0 || !p.Stamped) &&
		p.AudioPrivate < Silent
}

// Silent is the far-end audio energy below which it hears nothing (the
// unit's test microphone, a tone, reports about 0.1 and more).
//
// Judged from AudioSettle after the press: with 0.5 s, a long run on a
// loaded machine (load 10-15) saw the far end's audio up to about a second
// late (silent just before the press, the tone during it: sound from before
// the press, played late, as Chromium keeps audio in step with a lagging
// video track).
const Silent = 0.01

// Audible is the far-end audio energy that says it hears the room before a
// press (the test tone reports about 0.1 to 0.18).
const Audible = 0.05

// AudioSettle is how long after the press (after the end of a cut) the far
// end may still play what was sent before it: its jitter buffer, the
// analyser's 170 ms window, and the delay Chromium adds to audio to keep
// it in sync with a video track that is behind (seen up to about 0.8 s
// after a cut, with the camera pass-through).
const AudioSettle = time.Second

func (p Press) String() string {
	if p.Mute {
		return fmt.Sprintf("%s: audio energy %.3f before, up to %.3f while muted (%.3f by page time); %s", p.Phase, p.AudioBefore, p.AudioPrivate, p.AudioPrivatePage, p.sent())
	}
	c := "never"
	if p.Converged >= 0 {
		c = p.Converged.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("%s: slate held after %s; room frames after the press %d (later than %s: %d; stamped at/after the press: %d; unreadable: %d); last room frame captured %s before the press; audio energy %.3f before, up to %.3f while private (%.3f by page time); %s",
		p.Phase, c, p.RoomAfter, Bound, p.LateRoom, p.StampAfterPress, p.NoStamp, p.LastRoomStampAge.Round(time.Millisecond), p.AudioBefore, p.AudioPrivate, p.AudioPrivatePage, p.sent())
}

// sent says what the unit coded while shut: with only silence sent, sound
// at the far end is what it played late from before the press.
func (p Press) sent() string {
	if p.SentAll < 0 {
		return "the unit's coded frames not recorded"
	}
	return fmt.Sprintf("the unit coded %d of %d Opus frames with room sound while shut (after its first %d)", p.SentLoud, p.SentAll, SentPipeline)
}

// CutFor is the total outage at the press (the 300 ms).
const CutFor = 300 * time.Millisecond

// Phase is a run of presses under one condition.
type Phase struct {
	Loss    int  // % random UDP loss
	N       int  // presses (Presses(N) is used)
	Cut     bool // all UDP dropped for CutFor from each press on
	Stamped bool // the unit stamps its camera frames: check every stamp
	// Mute presses MUTE instead of PRIVACY (the gate shuts audio only):
	// only the far end's sound is judged, from AudioSettle after the press.
	Mute bool
}

func (ph Phase) String() string {
	s := fmt.Sprintf("%d %% loss", ph.Loss)
	if ph.Mute {
		s = "MUTE, " + s
	}
	if ph.Cut {
		s = "300 ms cut at the press, " + s
	}
	return s
}

// Run makes the phase's presses: each opens the gate, waits for the room at
// the far end, presses (gate shut: the debounced PRIVACY), keeps the unit
// private for Private, and judges what the far end showed.
//
// sent, if not nil, is the unit's SendTransform recorder: each press is
// then also judged by what the unit coded while shut.
func Run(t *testing.T, fe *farend.FarEnd, g *gate.Gate, net *lossynet.Net, ph Phase, sent *Sent) []Press {
	t.Helper()
	net.Loss(ph.Loss)
	cut := ph.Cut
	var out []Press
	for i := range Presses(ph.N) {
		g.Set(gate.State{Video: true, Audio: true})
		opened := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := fe.WaitFor(ctx, func(s farend.FarEndStats) bool {
			return !s.LastFrameIsUniform && s.LastFrameAt.After(opened)
		})
		cancel()
		if err != nil {
			t.Fatalf("press %d: the far end never showed the room again after the gate opened: %v; %s", i, err, fe.Stats())
		}
		// And hears it: until then the far end may still be filling its
		// buffers (right after it joined, or after a cut), and sound from
		// before the press would play during it, late, and be taken for
		// a leak (seen on the first press of a run: silent before, the
		// tone 1 s into the press).
		ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
		_, err = fe.WaitFor(ctx, func(s farend.FarEndStats) bool { return s.AudioEnergy >= Audible })
		cancel()
		if err != nil {
			t.Fatalf("press %d: the far end never heard the room again after the gate opened: %v; %s", i, err, fe.Stats())
		}
		time.Sleep(time.Duration(200+rand.IntN(300)) * time.Millisecond)
		p := Press{Phase: ph, AudioBefore: fe.Stats().AudioEnergy}
		var restored <-chan struct{}
		if cut {
			restored = net.CutFor(CutFor) // nft takes some ms: the cut is in place before the press
		}
		p.At = time.Now()
		g.Set(gate.State{Video: ph.Mute})
		p.Shut = time.Now()
		for time.Since(p.At) < Private {
			time.Sleep(50 * time.Millisecond)
			settle := AudioSettle
			if cut {
				settle += CutFor // nothing arrives before the cut ends: the far end conceals until then
			}
			if s := fe.Stats(); s.ReceivedAt.Sub(p.At) > settle {
				p.AudioPrivate = max(p.AudioPrivate, s.AudioEnergy)
				if s.LastFrameAt.Sub(p.At) > settle {
					p.AudioPrivatePage = max(p.AudioPrivatePage, s.AudioEnergy)
				}
			}
		}
		p.Reopen = time.Now()
		if restored != nil {
			<-restored
		}
		out = append(out, p)
	}
	g.Set(gate.State{Video: true, Audio: true})
	time.Sleep(500 * time.Millisecond) // the last reports
	frames := fe.Frames()
	for i := range out {
		out[i] = Judge(frames, out[i])
		out[i].SentLoud, out[i].SentAll = sent.loud(out[i].Shut, out[i].Reopen)
	}
	return out
}

// Judge fills in what the far end showed for p from its presented frames.
func Judge(frames []farend.FrameSample, p Press) Press {
	p.Converged, p.LastRoomStampAge = -1, -1
	if p.Mute {
		return p // the picture goes on: nothing to judge in it
	}
	shut := p.Shut
	if shut.IsZero() {
		shut = p.At
	}
	var lastRoom *farend.FrameSample
	var shownAtPress *farend.FrameSample // the picture the far end had when pressed
	for i := range frames {
		f := &frames[i]
		if !f.At.After(p.At) {
			shownAtPress = f
			continue
		}
		if !f.At.Before(p.Reopen) {
			break
		}
		if f.Uniform {
			if p.Converged < 0 {
				p.Converged = f.At.Sub(p.At)
			}
			continue
		}
		p.Converged = -1
		lastRoom = f
		p.RoomAfter++
		if f.At.Sub(p.At) > Bound {
			p.LateRoom++
		}
		switch {
		case f.Stamp < 0:
			p.NoStamp++
		case capture.StampAge(shut, uint32(f.Stamp)) < 0:
			// Captured after the gate had shut (stamps are whole ms: one
			// taken in the millisecond the gate shut is not counted; the
			// gate drops every frame stamped after it shut anyway).
			p.StampAfterPress++
		}
	}
	if lastRoom == nil && shownAtPress != nil && !shownAtPress.Uniform {
		lastRoom = shownAtPress
	}
	if lastRoom != nil && lastRoom.Stamp >= 0 {
		p.LastRoomStampAge = capture.StampAge(p.At, uint32(lastRoom.Stamp))
	}
	return p
}

// Summary is p50 and max of the time to the slate, over presses that got
// there (never-converged presses are counted apart).
func Summary(ps []Press) (p50, maxd time.Duration, never int) {
	var ds []time.Duration
	for _, p := range ps {
		if p.Mute {
			continue
		}
		if p.Converged < 0 {
			never++
			continue
		}
		ds = append(ds, p.Converged)
	}
	if len(ds) == 0 {
		return -1, -1, never
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[len(ds)-1], never
}

// Check fails t for every press that missed the requirement, and logs the
// phase's figures.
func Check(t *testing.T, label string, ps []Press) {
	t.Helper()
	p50, maxd, never := Summary(ps)
	bad := 0
	for i, p := range ps {
		if !p.OK() {
			bad++
			t.Errorf("%s: press %d: %s", label, i, p)
		}
	}
	var audioBefore, audioPrivate float64
	for _, p := range ps {
		audioBefore = max(audioBefore, p.AudioBefore)
		audioPrivate = max(audioPrivate, p.AudioPrivate)
	}
	loud, sentLoud, sentAll := 0, 0, 0
	for _, p := range ps {
		if p.AudioPrivate >= Silent {
			loud++
		}
		sentLoud += max(p.SentLoud, 0)
		sentAll += max(p.SentAll, 0)
	}
	sent := fmt.Sprintf("the unit coded %d of %d Opus frames with room sound while shut", sentLoud, sentAll)
	if len(ps) > 0 && ps[0].SentAll < 0 {
		sent = "the unit's coded frames not recorded"
	}
	if len(ps) > 0 && ps[0].Mute {
		t.Logf("%s: %d presses, failed %d; far-end audio energy up to %.3f open, %.4f muted (%d presses with sound while muted); %s",
			label, len(ps), bad, audioBefore, audioPrivate, loud, sent)
		return
	}
	// The last room frame the far end showed (the stamp check): how long
	// before the press it was captured, over the presses.
	var ages []time.Duration
	unread := 0
	for _, p := range ps {
		if p.LastRoomStampAge < 0 {
			unread++
			continue
		}
		ages = append(ages, p.LastRoomStampAge)
	}
	stamps := "no stamps"
	switch {
	case len(ps) > 0 && !ps[0].Stamped:
		stamps, unread = "frames not stamped", 0
	case len(ages) > 0:
		stamps = fmt.Sprintf("last room frame shown captured %s to %s before the press", slices.Min(ages).Round(time.Millisecond), slices.Max(ages).Round(time.Millisecond))
	}
	t.Logf("%s: %d presses, press → slate held at the far end p50 %s max %s, never %d, failed %d; %s (%d unreadable); far-end audio energy up to %.3f open, %.4f private (%d presses with sound while private); %s",
		label, len(ps), p50.Round(time.Millisecond), maxd.Round(time.Millisecond), never, bad, stamps, unread, audioBefore, audioPrivate, loud, sent)
}
