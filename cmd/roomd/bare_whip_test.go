package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/prop"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/encoder"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/whip"
)

// bareWHIPPublish is the yardstick for the unit's join: a plain pion WHIP
// publisher (the same test camera and openh264, no gate, no shutter, no
// warm-up) posting to the same LiveKit. It returns when the offer/answer
// began (start) and a func that ends the session.
func bareWHIPPublish(tb testing.TB, lk *farend.LiveKit, room, identity string) (time.Time, func()) {
	tb.Helper()
	vc, err := encoder.Choose(encoder.Video, "H264", encoder.Settings{})
	if err != nil {
		tb.Fatal(err)
	}
	vb, err := vc.Chosen.Video(encoder.Settings{BitRate: 1_200_000, KeyFrameInterval: 60})
	if err != nil {
		tb.Fatal(err)
	}
	sel := mediadevices.NewCodecSelector(mediadevices.WithVideoEncoders(vb))
	stream, err := mediadevices.GetUserMedia(mediadevices.MediaStreamConstraints{
		Video: func(c *mediadevices.MediaTrackConstraints) {
			c.Width, c.Height, c.FrameRate = prop.Int(640), prop.Int(480), prop.Float(30)
		},
		Codec: sel,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := livekit.JoinToken(lk.APIKey, lk.APISecret, identity, room, time.Minute)
	if err != nil {
		tb.Fatal(err)
	}
	me := &webrtc.MediaEngine{}
	sel.Populate(me)
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(me, ir); err != nil {
		tb.Fatal(err)
	}
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	api := webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se))

	start := time.Now()
	pc, err := api.NewPeerConnection(webrtc.Configuration{BundlePolicy: webrtc.BundlePolicyMaxBundle})
	if err != nil {
		tb.Fatal(err)
	}
	for _, t := range stream.GetTracks() {
		if _, err := pc.AddTransceiverFromTrack(t, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
			tb.Fatal(err)
		}
	}
	client, err := whip.New(whip.Config{Endpoint: strings.TrimSuffix(lk.URL, "/") + "/whip/v1", Token: tok})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := client.Publish(ctx, pc)
	if err != nil {
		tb.Fatalf("bare WHIP publish: %v", err)
	}
	return start, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sess.Delete(ctx)
		_ = pc.Close()
		for _, t := range stream.GetTracks() {
			_ = t.Close()
		}
	}
}
