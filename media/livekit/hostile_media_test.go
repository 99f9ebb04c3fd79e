package livekit_test

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// rawH264Publisher publishes one H.264 track over LiveKit's WHIP endpoint
// and writes RTP packets of its own making into it: a far-end participant
// that sends whatever it likes.
type rawH264Publisher struct {
	track *webrtc.TrackLocalStaticRTP
	seq   uint16
	ts    uint32
}

func startRawH264Publisher(t *testing.T, lk *farend.LiveKit, room, identity string) *rawH264Publisher {
	t.Helper()
	var se webrtc.SettingEngine
	se.SetIncludeLoopbackCandidate(true)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	m := &webrtc.MediaEngine{}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeH264, ClockRate: 90000, SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
	}, PayloadType: 102}, webrtc.RTPCodecTypeVideo); err != nil {
		t.Fatal(err)
	}
	pc, err := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(m)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	track, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000}, "video", identity)
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
	return &rawH264Publisher{track: track, seq: 1000}
}

func (p *rawH264Publisher) write(t *testing.T, payload []byte, marker bool) {
	p.seq++
	if err := p.track.WriteRTP(&rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: p.seq, Timestamp: p.ts, Marker: marker}, Payload: payload}); err != nil {
		t.Fatalf("publisher: %v", err)
	}
}

// frame sends one access unit (Annex B) as a real encoder's packetiser
// would.
func (p *rawH264Publisher) frame(t *testing.T, au []byte) {
	p.ts += 3000
	pay := (&codecs.H264Payloader{}).Payload(1200, au)
	for i, b := range pay {
		p.write(t, b, i == len(pay)-1)
	}
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func h264Video(s playout.Stats) playout.VideoStats {
	for _, v := range s.Video {
		if v.Codec == "H264" {
			return v
		}
	}
	return playout.VideoStats{}
}

// A participant publishes H.264 through the real LiveKit: one real keyframe
// (so the SFU forwards), then 50 MB of FU-A fragments that start a NAL and
// never end it, each with a new timestamp. Before the fix the unit's heap
// grew by every byte (114 MB sent: 118 MB live heap). It must stay bounded
// by the frame cap, and the participant's next real keyframe must still be
// shown. KONSULT_HOSTILE_MB sets how much is sent.
func TestFarEndFragmentFloodBounded(t *testing.T) {
	sendMB := 50
	if v, err := strconv.Atoi(os.Getenv("KONSULT_HOSTILE_MB")); err == nil && v > 0 {
		sendMB = v
	}
	units, err := capture.SlateH264(320, 240, 30)
	if err != nil {
		t.Fatal(err)
	}
	key := units[0]
	lk := farend.StartLiveKit(t)
	call, _ := joinRTC(t, lk, "flood", nil, livekit.RTCOptions{})
	pub := startRawH264Publisher(t, lk, "flood", "hostile")

	deadline := time.Now().Add(20 * time.Second)
	for h264Video(call.Playout().Stats()).Keyframes == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the unit shows no keyframe of the publisher within 20 s: %+v", call.Playout().Stats())
		}
		pub.frame(t, key)
		time.Sleep(100 * time.Millisecond)
	}
	v0 := h264Video(call.Playout().Stats())
	h0 := liveHeap()

	junk := append([]byte{0x7c, 0x80 | 1}, bytes.Repeat([]byte{0xcd}, 1150)...) // FU-A, start bit, non-IDR slice
	total := sendMB << 20
	t0 := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	for sent := 0; sent < total; {
		<-tick.C
		for i := 0; i < 12 && sent < total; i++ { // about 22 Mbit/s
			pub.ts += 3000
			pub.write(t, junk, false)
			sent += len(junk)
		}
	}
	tick.Stop()
	// Whatever LiveKit still has in flight arrives.
	var v1 playout.VideoStats
	for last, quiet := uint64(0), 0; quiet < 5; time.Sleep(100 * time.Millisecond) {
		v1 = h264Video(call.Playout().Stats())
		if v1.Received == last {
			quiet++
		} else {
			quiet, last = 0, v1.Received
		}
	}
	h1 := liveHeap()
	got := v1.Received - v0.Received
	t.Logf("sent %d MB of start-only fragments in %s; the unit received %.1f MB; live heap %.1f MB -> %.1f MB; the unit buffers %d KB for the video",
		sendMB, time.Since(t0).Round(time.Millisecond), float64(got)/(1<<20), float64(h0)/(1<<20), float64(h1)/(1<<20), v1.Buffered>>10)
	if got < uint64(total)/2 {
		t.Fatalf("the unit received only %d of the %d bytes sent: the flood did not get through the SFU, the test says nothing", got, total)
	}
	if grow := int64(h1) - int64(h0); grow > 4*playout.MaxFrameBytes {
		t.Errorf("the unit's live heap grew %.1f MB over %.1f MB of unfinished fragments; want at most %d MB",
			float64(grow)/(1<<20), float64(got)/(1<<20), 4*playout.MaxFrameBytes>>20)
	}
	if v1.Buffered > 2*playout.MaxFrameBytes {
		t.Errorf("the unit buffers %d bytes for one video; cap %d", v1.Buffered, 2*playout.MaxFrameBytes)
	}

	deadline = time.Now().Add(10 * time.Second)
	for h264Video(call.Playout().Stats()).Keyframes <= v1.Keyframes {
		if time.Now().After(deadline) {
			t.Fatalf("the publisher's real keyframe is not shown after the flood: %+v", h264Video(call.Playout().Stats()))
		}
		pub.frame(t, key)
		time.Sleep(100 * time.Millisecond)
	}
}
