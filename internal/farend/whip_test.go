package farend

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
)

// whipPublish publishes a VP8 track from Go over LiveKit's WHIP endpoint
// (a minimal inline WHIP client; the real one lives in media/whip).
func whipPublish(t *testing.T, lk *LiveKit, room, identity string) *webrtc.TrackLocalStaticSample {
	t.Helper()
	var se webrtc.SettingEngine
	se.SetIncludeLoopbackCandidate(true)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	track, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8}, "video", "go-slate")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.AddTransceiverFromTrack(track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	req, _ := http.NewRequest(http.MethodPost, lk.URL+"/whip/v1", bytes.NewReader([]byte(pc.LocalDescription().SDP)))
	req.Header.Set("Content-Type", "application/sdp")
	req.Header.Set("Authorization", "Bearer "+lk.Token(identity, room, true, false, time.Hour))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("WHIP POST: %s: %s", resp.Status, answer)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: string(answer)}); err != nil {
		t.Fatal(err)
	}
	return track
}

// TestGoPublisherReachesBrowser: a Go WHIP publisher sends a grey VP8 slate;
// the browser must decode it and see a uniform mid-grey picture.
func TestGoPublisherReachesBrowser(t *testing.T) {
	lk := StartLiveKit(t)
	b := StartFarEnd(t, lk, "whip-room", "patient")
	track := whipPublish(t, lk, "whip-room", "go-unit")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stop := make(chan struct{})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		frame := slateKeyFrame(320, 240)
		tick := time.NewTicker(time.Second / 20)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = track.WriteSample(media.Sample{Data: frame, Duration: time.Second / 20})
			}
		}
	}()
	defer func() { close(stop); <-sent }()

	s, err := b.WaitFor(ctx, func(s FarEndStats) bool {
		return s.FramesPresented > 20 && s.FPS >= 15
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("browser sees Go publisher: %s", s)
	if s.VideoFrom != "go-unit" || !slices.Contains(s.RemoteParticipants, "go-unit") {
		t.Errorf("video from %q, remote %v", s.VideoFrom, s.RemoteParticipants)
	}
	if s.FrameWidth != 320 || s.FrameHeight != 240 {
		t.Errorf("frame %dx%d, want 320x240", s.FrameWidth, s.FrameHeight)
	}
	if !s.LastFrameIsUniform {
		t.Errorf("slate not uniform: %s", s)
	}
	for _, c := range s.LastFrameMeanRGB {
		if c < 110 || c > 150 {
			t.Errorf("slate colour %v, want mid-grey", s.LastFrameMeanRGB)
			break
		}
	}
}
