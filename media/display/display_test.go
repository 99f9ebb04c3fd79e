package display

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/playout"
)

// testPage is a pion peer in the page's place: Slots receive-only video
// sections, and a count of RTP packets per slot.
type testPage struct {
	pc      *webrtc.PeerConnection
	midSlot map[string]int
	mu      sync.Mutex
	packets [Slots]int
	tracks  atomic.Int32
}

func connectPage(t *testing.T, d *Display) *testPage { return connectPageB(t, d) }

func connectPageB(t testing.TB, d *Display) *testPage {
	t.Helper()
	api, err := newAPI() // the same codecs and loopback settings
	if err != nil {
		t.Fatal(err)
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	p := &testPage{pc: pc, midSlot: map[string]int{}}
	for range Slots {
		if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			t.Fatal(err)
		}
	}
	pc.OnTrack(func(tr *webrtc.TrackRemote, rcv *webrtc.RTPReceiver) {
		p.tracks.Add(1)
		var mid string
		for _, x := range pc.GetTransceivers() {
			if x.Receiver() == rcv {
				mid = x.Mid()
			}
		}
		p.mu.Lock()
		slot, ok := p.midSlot[mid]
		p.mu.Unlock()
		for {
			if _, _, err := tr.ReadRTP(); err != nil {
				return
			}
			if ok {
				p.mu.Lock()
				p.packets[slot]++
				p.mu.Unlock()
			}
		}
	})
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	ans, err := d.Connect(context.Background(), pc.LocalDescription().SDP)
	if err != nil {
		t.Fatal(err)
	}
	if len(ans.Mids) != Slots {
		t.Fatalf("answer names %d slots, want %d", len(ans.Mids), Slots)
	}
	p.mu.Lock()
	for i, m := range ans.Mids {
		p.midSlot[m] = i
	}
	p.mu.Unlock()
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: ans.SDP}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for pc.ConnectionState() != webrtc.PeerConnectionStateConnected {
		if time.Now().After(deadline) {
			t.Fatalf("page peer connection: %s", pc.ConnectionState())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

func (p *testPage) count(slot int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.packets[slot]
}

// VP8 frame headers: enough for the keyframe test, not for a decoder.
var (
	vp8Key   = []byte{0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 1, 2, 3, 4}
	vp8Delta = []byte{0x11, 0x02, 0x00, 5, 6, 7, 8, 9}
)

func newDisplay(t *testing.T, g *gate.Gate, selfKey func()) *Display {
	t.Helper()
	d, err := New(Config{Gate: g, SelfKeyframe: selfKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func eventually(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A slot sends the page nothing before a keyframe, asks the far end for
// one when it starts, and then forwards every frame.
func TestSlotWaitsForKeyframe(t *testing.T) {
	d := newDisplay(t, gate.New(), nil)
	var asked atomic.Int32
	d.SetFarEnd(&FarEnd{Keyframe: func(p string) bool {
		if p == "p-a" {
			asked.Add(1)
		}
		return true
	}})
	page := connectPage(t, d)
	for range 10 {
		d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Data: vp8Delta, At: time.Now()})
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if n := page.count(0); n != 0 {
		t.Fatalf("%d packets reached the page before a keyframe", n)
	}
	eventually(t, "a keyframe asked of the far end", time.Second, func() bool { return asked.Load() > 0 })
	d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Keyframe: true, Width: 640, Height: 480, Data: vp8Key, At: time.Now()})
	for range 5 {
		d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Data: vp8Delta, At: time.Now()})
	}
	eventually(t, "the keyframe and what follows reach the page", 5*time.Second, func() bool { return page.count(0) >= 6 })
	st := d.State()
	if len(st.Far) != 1 || st.Far[0].Participant != "p-a" || st.Far[0].Width != 640 || st.Pages != 1 || !st.InCall {
		t.Fatalf("state %+v", st)
	}
}

// Slots are bounded: a ninth far-end video waits; a participant who leaves
// (or whose video stops for IdleAfter) frees theirs; the call's end frees
// all.
func TestSlotsBounded(t *testing.T) {
	d := newDisplay(t, gate.New(), nil)
	d.SetFarEnd(&FarEnd{})
	for i := range FarSlots + 1 {
		d.FarFrame(playout.VideoFrame{Participant: "p-" + string(rune('a'+i)), Codec: "VP8", Keyframe: true, Data: vp8Key})
	}
	if n := len(d.State().Far); n != FarSlots {
		t.Fatalf("%d slots taken, want %d", n, FarSlots)
	}
	d.Left("p-a")
	d.FarFrame(playout.VideoFrame{Participant: "p-i", Codec: "VP8", Keyframe: true, Data: vp8Key})
	st := d.State()
	if len(st.Far) != FarSlots || st.Far[0].Participant != "p-i" {
		t.Fatalf("after a leave, the waiting video should take the free slot: %+v", st.Far)
	}
	eventually(t, "idle slots freed", IdleAfter+2*time.Second, func() bool { return len(d.State().Far) == 0 })
	d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Keyframe: true, Data: vp8Key})
	d.SetFarEnd(nil)
	if st := d.State(); len(st.Far) != 0 || st.InCall {
		t.Fatalf("after the call: %+v", st)
	}
	d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Keyframe: true, Data: vp8Key})
	if n := len(d.State().Far); n != 0 {
		t.Fatalf("a frame with no call took a slot")
	}
	// Oversized frames are not taken.
	d.SetFarEnd(&FarEnd{})
	d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Keyframe: true, Data: make([]byte, MaxFrameBytes+1)})
	if n := len(d.State().Far); n != 0 {
		t.Fatalf("an oversized frame took a slot")
	}
}

// Offers other than the page's (audio, too many sections, too big) are
// refused; a third page replaces the oldest.
func TestOffersAndPagesBounded(t *testing.T) {
	d := newDisplay(t, gate.New(), nil)
	for name, sdp := range map[string]string{
		"audio":   "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
		"ten":     "v=0\r\n" + strings.Repeat("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n", 10),
		"none":    "v=0\r\n",
		"too big": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n" + strings.Repeat("a=x\r\n", MaxOfferBytes/4),
		"not sdp": "m=video hello",
	} {
		if _, err := d.Connect(context.Background(), sdp); err == nil {
			t.Errorf("%s offer taken", name)
		}
	}
	for range MaxPages + 1 {
		connectPage(t, d)
	}
	if n := d.State().Pages; n != MaxPages {
		t.Fatalf("%d pages fed, want at most %d", n, MaxPages)
	}
}

// The self-view slot takes frames from the tap, asks the encoder for a
// keyframe when a page connects, and waits for one after the camera comes
// out again.
func TestSelfSlot(t *testing.T) {
	g := gate.New()
	var asked atomic.Int32
	d := newDisplay(t, g, func() { asked.Add(1) })
	d.SelfFrame(capture.EncodedFrame{Codec: "VP8", Data: vp8Key, Keyframe: true, At: time.Now()}) // no page: dropped
	page := connectPage(t, d)
	eventually(t, "a keyframe asked of the encoder", time.Second, func() bool { return asked.Load() > 0 })
	g.Set(gate.State{Video: true})
	eventually(t, "camera out in the state", time.Second, func() bool { return d.State().CameraOut })
	d.SelfFrame(capture.EncodedFrame{Codec: "VP8", Data: vp8Delta, At: time.Now()})
	time.Sleep(100 * time.Millisecond)
	if n := page.count(SelfSlot); n != 0 {
		t.Fatalf("a delta frame before any keyframe reached the page (%d packets)", n)
	}
	d.SelfFrame(capture.EncodedFrame{Codec: "VP8", Data: vp8Key, Keyframe: true, At: time.Now()})
	d.SelfFrame(capture.EncodedFrame{Codec: "VP8", Data: vp8Delta, At: time.Now()})
	eventually(t, "self-view frames reach the page", 5*time.Second, func() bool { return page.count(SelfSlot) >= 2 })
	g.Set(gate.State{})
	eventually(t, "camera not out in the state", time.Second, func() bool { return !d.State().CameraOut })
	g.Set(gate.State{Video: true})
	eventually(t, "camera out again", time.Second, func() bool { return d.State().CameraOut })
	n := page.count(SelfSlot)
	d.SelfFrame(capture.EncodedFrame{Codec: "VP8", Data: vp8Delta, At: time.Now()})
	time.Sleep(100 * time.Millisecond)
	if m := page.count(SelfSlot); m != n {
		t.Fatalf("after the camera came out again a delta frame reached the page before a keyframe")
	}
}

// A far end that switches codec (VP8 to H.264) keeps its tile: the slot's
// track is replaced, and the page waits for the new codec's keyframe. A
// codec the screen is not fed in takes no slot.
func TestSlotCodecChange(t *testing.T) {
	d := newDisplay(t, gate.New(), nil)
	d.SetFarEnd(&FarEnd{})
	page := connectPage(t, d)
	// A far end sends frames on and on; the first may come before the
	// page's connection is up (CI under load saw the only one lost).
	eventually(t, "VP8 reaches the page", 5*time.Second, func() bool {
		d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Keyframe: true, Data: vp8Key, At: time.Now()})
		time.Sleep(40 * time.Millisecond)
		return page.count(0) >= 1
	})
	time.Sleep(100 * time.Millisecond) // the last keyframes in flight land
	n := page.count(0)
	h264Delta := []byte{0, 0, 0, 1, 0x41, 0x9a, 1, 2, 3}
	h264Key := []byte{0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80, 0, 0, 0, 1, 0x65, 0x88, 1, 2, 3}
	d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "H264", Data: h264Delta, At: time.Now()})
	time.Sleep(100 * time.Millisecond)
	if page.count(0) != n {
		t.Fatal("an H.264 delta frame reached the page before an H.264 keyframe")
	}
	eventually(t, "H.264 reaches the page on the same slot", 5*time.Second, func() bool {
		d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "H264", Keyframe: true, Data: h264Key, At: time.Now()})
		time.Sleep(40 * time.Millisecond)
		return page.count(0) > n
	})
	if st := d.State(); len(st.Far) != 1 || st.Far[0].Codec != "H264" {
		t.Fatalf("state %+v", st.Far)
	}
	d.FarFrame(playout.VideoFrame{Participant: "p-b", Codec: "AV1", Keyframe: true, Data: vp8Key, At: time.Now()})
	if n := len(d.State().Far); n != 1 {
		t.Fatalf("a codec the screen is not fed took a slot")
	}
}

// A far end (or a stalled page) cannot make the display hold more than
// the queue's bound: frames past it are dropped and the slot waits for a
// keyframe.
func TestQueueBounded(t *testing.T) {
	d := newDisplay(t, gate.New(), nil)
	d.SetFarEnd(&FarEnd{})
	connectPage(t, d)
	d.mu.Lock()
	p := d.pages[0]
	d.mu.Unlock()
	big := make([]byte, 512<<10)
	copy(big, vp8Key)
	worst := int64(0)
	for range 2000 {
		d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Keyframe: true, Data: big, At: time.Now()})
		worst = max(worst, p.qBytes.Load())
		if n := len(p.q); n > QueueFrames {
			t.Fatalf("%d frames queued", n)
		}
	}
	if worst > QueueBytes {
		t.Fatalf("%d bytes queued, bound %d", worst, QueueBytes)
	}
	t.Logf("2000 frames of 512 KiB at once: at most %.1f MiB queued", float64(worst)/(1<<20))
}

// The unit re-opens its media, and so its gate, on a config change while
// the screen stays: the state and the self-view follow the new gate, and
// the old one (closed for good) moves nothing on the page.
func TestSetGateFollowsTheNewGate(t *testing.T) {
	old := gate.New()
	var asked atomic.Int32
	d := newDisplay(t, old, func() { asked.Add(1) })
	page := connectPage(t, d)
	old.Set(gate.State{Video: true})
	eventually(t, "camera out on the first gate", time.Second, func() bool { return d.State().CameraOut })
	next := gate.New()
	d.SetGate(next)
	eventually(t, "the new gate's camera-not-out in the state", time.Second, func() bool { return !d.State().CameraOut })
	old.Set(gate.State{})
	old.Set(gate.State{Video: true})
	time.Sleep(50 * time.Millisecond)
	if d.State().CameraOut {
		t.Fatal("the replaced gate still decides the self-view")
	}
	before := asked.Load()
	next.Set(gate.State{Video: true})
	eventually(t, "camera out on the new gate", time.Second, func() bool { return d.State().CameraOut })
	eventually(t, "a keyframe asked when the new gate lets video out", time.Second, func() bool { return asked.Load() > before })
	d.SelfFrame(capture.EncodedFrame{Codec: "VP8", Data: vp8Delta, At: time.Now()})
	time.Sleep(100 * time.Millisecond)
	if n := page.count(SelfSlot); n != 0 {
		t.Fatalf("a delta frame from before the swap's keyframe reached the page (%d packets)", n)
	}
	d.SelfFrame(capture.EncodedFrame{Codec: "VP8", Data: vp8Key, Keyframe: true, At: time.Now()})
	eventually(t, "self-view frames behind the new gate reach the page", 5*time.Second, func() bool { return page.count(SelfSlot) >= 1 })
}
