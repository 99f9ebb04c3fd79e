package unit

import (
	"context"
	"sync/atomic"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/display"
	"github.com/konsult/konsult/media/livekit"
)

// The unit's own screen (appliance/screen, media/display) outlives the
// parts: the kiosk keeps one page open while a config change re-opens the
// media. Each opening hands the display its new gate and a fresh tap on the
// new encoder, and each call its far end.

// screenHooks is what one opening of the parts gives the display.
type screenHooks struct {
	disp *display.Display
	tap  *atomic.Pointer[capture.Tap] // the running parts' tap, for SelfKeyframe
}

// SelfKeyframe asks the running encoder for a keyframe for the self-view
// (display.Config.SelfKeyframe).
func (u *Unit) SelfKeyframe() {
	if t := u.selfTap.Load(); t != nil {
		t.RequestKeyframe()
	}
}

// screen returns the hooks for the parts being opened, or nil without a
// screen.
func (u *Unit) screen() *screenHooks {
	if u.d.Display == nil {
		return nil
	}
	return &screenHooks{disp: u.d.Display, tap: &u.selfTap}
}

// media wires the self-view into the media of one opening: the tap sits on
// the encoder's output behind this opening's gate (invariant 9).
func (s *screenHooks) media(p *parts, lm *livekit.Media) {
	if s == nil {
		return
	}
	s.disp.SetGate(p.gate)
	tap := capture.NewTap(p.gate)
	tap.SetSink(s.disp.SelfFrame)
	lm.SelfView = tap
	s.tap.Store(tap)
}

// rtc feeds the far end's frames to the screen, and attaches each call.
func (s *screenHooks) rtc(opt *livekit.RTCOptions) {
	if s == nil {
		return
	}
	opt.OnVideoFrame = s.disp.FarFrame
}

func (s *screenHooks) join(rtc *livekit.RTCConnector, keys *e2eeParts) appliance.Conference {
	// The call says whether it is end to end encrypted, with the safety
	// code of the key the connector took for it (appliance.Encrypted).
	join := func(ctx context.Context) (e2eeCall, error) {
		c, err := rtc.Join(ctx)
		if err != nil {
			return e2eeCall{}, err
		}
		return e2eeCall{RTCCall: c, code: keys.current().code}, nil
	}
	if s == nil {
		return appliance.JoinWith(join)
	}
	disp := s.disp
	return appliance.JoinWith(func(ctx context.Context) (e2eeCall, error) {
		c, err := join(ctx)
		if err != nil {
			return c, err
		}
		f := &display.FarEnd{Keyframe: c.RequestKeyframe}
		if pl := c.Playout(); pl != nil {
			f.Speaking = pl.Speaking
		}
		disp.SetFarEnd(f)
		go func() {
			for range c.Ended() { //nolint:revive // drained until closed: the call is over either way
			}
			disp.EndFarEnd(f)
		}()
		return c, nil
	})
}
