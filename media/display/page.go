package display

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	rtpcodecs "github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"
)

// MaxOfferBytes bounds the page's offer. Chromium's, nine video sections
// with every codec it decodes, is 47 KB.
const MaxOfferBytes = 256 << 10

// codecs the pages are fed in: what far ends send (browsers: VP8, H.264)
// and what the unit's encoder codes.
var codecs = map[string]webrtc.RTPCodecCapability{
	"VP8":  {MimeType: webrtc.MimeTypeVP8, ClockRate: 90000},
	"H264": {MimeType: webrtc.MimeTypeH264, ClockRate: 90000, SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"},
}

// newAPI is the WebRTC API for the pages: those two codecs, and loopback
// only (the page is on the unit; nothing of this connection may leave it).
func newAPI() (*webrtc.API, error) {
	me := &webrtc.MediaEngine{}
	fb := []webrtc.RTCPFeedback{{Type: "nack"}, {Type: "nack", Parameter: "pli"}, {Type: "ccm", Parameter: "fir"}}
	for pt, name := range map[webrtc.PayloadType]string{96: "VP8", 102: "H264"} {
		c := codecs[name]
		c.RTCPFeedback = fb
		if err := me.RegisterCodec(webrtc.RTPCodecParameters{RTPCodecCapability: c, PayloadType: pt}, webrtc.RTPCodecTypeVideo); err != nil {
			return nil, fmt.Errorf("register %s: %w", name, err)
		}
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(me, ir); err != nil {
		return nil, fmt.Errorf("interceptors: %w", err)
	}
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	return webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se)), nil
}

// Answer is what a page gets back for its offer: the answer, and the mid
// of each slot's section (Mids[SelfSlot] is the self-view).
type Answer struct {
	SDP  string   `json:"sdp"`
	Mids []string `json:"mids"`
}

// ErrBadOffer: the page's offer is not one the display takes.
var ErrBadOffer = errors.New("display: offer refused")

// Connect takes a screen page's offer (Slots receive-only video sections,
// gathered in full: no trickle) and answers it. The page gets each slot
// from its first keyframe on. A page beyond MaxPages replaces the oldest.
func (d *Display) Connect(ctx context.Context, offer string) (Answer, error) {
	if len(offer) > MaxOfferBytes {
		return Answer{}, fmt.Errorf("%w: over %d bytes", ErrBadOffer, MaxOfferBytes)
	}
	video, other := 0, 0
	for _, l := range strings.Split(offer, "\n") {
		if strings.HasPrefix(l, "m=video ") {
			video++
		} else if strings.HasPrefix(l, "m=") {
			other++
		}
	}
	if video == 0 || video > Slots || other > 0 {
		return Answer{}, fmt.Errorf("%w: want 1..%d video sections and nothing else, got %d video and %d other", ErrBadOffer, Slots, video, other)
	}
	pc, err := d.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return Answer{}, fmt.Errorf("display: peer connection: %w", err)
	}
	p := &page{d: d, pc: pc, q: make(chan frame, QueueFrames), gone: make(chan struct{})}
	fail := func(err error) (Answer, error) {
		_ = pc.Close()
		return Answer{}, err
	}
	for i := range Slots {
		t, pay, err := newTrack(i, "VP8")
		if err != nil {
			return fail(err)
		}
		tr, err := pc.AddTransceiverFromTrack(t, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			return fail(fmt.Errorf("display: slot %d: %w", i, err))
		}
		p.senders[i] = tr.Sender()
		p.out[i] = slotRTP{track: t, codec: "VP8", pay: pay, seq: rtp.NewRandomSequencer(), ts: rand.Uint32()}
		p.needKey[i].Store(true)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrBadOffer, err))
	}
	ans, err := pc.CreateAnswer(nil)
	if err != nil {
		return fail(fmt.Errorf("display: answer: %w", err))
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(ans); err != nil {
		return fail(fmt.Errorf("display: answer: %w", err))
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-time.After(5 * time.Second):
		return fail(errors.New("display: ICE gathering on loopback took over 5 s"))
	}
	out := Answer{SDP: pc.LocalDescription().SDP}
	for _, tr := range pc.GetTransceivers()[:Slots] {
		out.Mids = append(out.Mids, tr.Mid())
	}
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateFailed || s == webrtc.PeerConnectionStateClosed {
			d.drop(p)
		}
	})

	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fail(errors.New("display: closed"))
	}
	var old []*page
	for len(d.pages) >= MaxPages {
		old = append(old, d.pages[0])
		d.pages = d.pages[1:]
	}
	d.pages = append(d.pages, p)
	var busy []int
	for i, s := range d.slots {
		if s.participant != "" {
			busy = append(busy, i)
		}
	}
	d.bumpLocked()
	d.mu.Unlock()
	for _, o := range old {
		d.log.Info("screen: a newer page replaces the oldest", "max_pages", MaxPages)
		o.close()
	}
	d.log.Info("screen: page connected", "offer_bytes", len(offer), "video_sections", video)
	go p.write()
	for i := range Slots {
		go p.readRTCP(i)
	}
	// Mid call: the page has nothing to decode until the next keyframes.
	for _, i := range busy {
		d.keyframeFor(i)
	}
	d.keyframeFor(SelfSlot)
	return out, nil
}

func (d *Display) drop(p *page) {
	d.mu.Lock()
	for i, q := range d.pages {
		if q == p {
			d.pages = append(d.pages[:i], d.pages[i+1:]...)
			d.bumpLocked()
			break
		}
	}
	d.mu.Unlock()
	p.close()
}

func newTrack(slot int, codec string) (*webrtc.TrackLocalStaticRTP, rtp.Payloader, error) {
	c, ok := codecs[codec]
	if !ok {
		return nil, nil, fmt.Errorf("display: codec %q is not shown", codec)
	}
	var pay rtp.Payloader = &rtpcodecs.H264Payloader{}
	if codec == "VP8" {
		pay = &rtpcodecs.VP8Payloader{EnablePictureID: true}
	}
	t, err := webrtc.NewTrackLocalStaticRTP(c, "slot-"+strconv.Itoa(slot), "screen")
	if err != nil {
		return nil, nil, fmt.Errorf("display: slot %d track: %w", slot, err)
	}
	return t, pay, nil
}

// rtpMTU is pion's own outbound MTU, which its sample tracks packetise to.
const rtpMTU = 1200

// slotRTP is one slot's RTP across codec changes: one sequence and one
// clock, whichever track carries them. A fresh sample track would start
// at a random sequence number on the same SSRC, and the page's SRTP
// (pion's and Chromium's libsrtp alike) drops packets that jump back past
// its replay window: the new codec's frames would never reach the page.
type slotRTP struct {
	track *webrtc.TrackLocalStaticRTP
	codec string
	pay   rtp.Payloader
	seq   rtp.Sequencer
	ts    uint32 // the next frame's RTP timestamp
}

func (s *slotRTP) write(f frame) error {
	payloads := s.pay.Payload(rtpMTU, f.data)
	ts := s.ts
	s.ts += uint32(f.dur.Seconds()*float64(codecs[s.codec].ClockRate) + 0.5)
	for i, pl := range payloads {
		pkt := &rtp.Packet{
			Header: rtp.Header{
				Version:        2,
				Marker:         i == len(payloads)-1,
				SequenceNumber: s.seq.NextSequenceNumber(),
				Timestamp:      ts,
			},
			Payload: pl,
		}
		if err := s.track.WriteRTP(pkt); err != nil {
			return err
		}
	}
	return nil
}

type frame struct {
	slot  int
	codec string
	data  []byte
	key   bool
	dur   time.Duration
}

// page is one screen page's peer connection: a track per slot, fed by its
// own writer from a bounded queue.
type page struct {
	d       *Display
	pc      *webrtc.PeerConnection
	senders [Slots]*webrtc.RTPSender
	out     [Slots]slotRTP // the writer's
	needKey [Slots]atomic.Bool
	q       chan frame
	qBytes  atomic.Int64
	gone    chan struct{}
	once    sync.Once
}

func (p *page) close() {
	p.once.Do(func() {
		close(p.gone)
		_ = p.pc.Close()
	})
}

func (p *page) wantKey(slot int) { p.needKey[slot].Store(true) }

// enqueue never blocks: a full queue drops the frame, and its slot waits
// for a keyframe (a decoder missing a frame would show garbage).
func (p *page) enqueue(f frame) {
	if p.qBytes.Add(int64(len(f.data))) > QueueBytes {
		p.qBytes.Add(-int64(len(f.data)))
		p.dropped(f.slot)
		return
	}
	select {
	case p.q <- f:
	default:
		p.qBytes.Add(-int64(len(f.data)))
		p.dropped(f.slot)
	}
}

func (p *page) dropped(slot int) {
	if !p.needKey[slot].Swap(true) {
		p.d.keyframeFor(slot)
	}
}

func (p *page) write() {
	for {
		var f frame
		select {
		case <-p.gone:
			return
		case f = <-p.q:
		}
		p.qBytes.Add(-int64(len(f.data)))
		o := &p.out[f.slot]
		if o.codec != f.codec {
			t, pay, err := newTrack(f.slot, f.codec)
			if err == nil {
				err = p.senders[f.slot].ReplaceTrack(t)
			}
			if err != nil {
				p.d.log.Warn("screen: slot codec not taken", "slot", f.slot, "codec", f.codec, "err", err)
				continue
			}
			o.track, o.pay, o.codec = t, pay, f.codec
			p.needKey[f.slot].Store(true)
		}
		if p.needKey[f.slot].Load() {
			if !f.key {
				continue
			}
			p.needKey[f.slot].Store(false)
		}
		if err := o.write(f); err != nil && !errors.Is(err, io.ErrClosedPipe) {
			p.d.log.Debug("screen: frame not written", "slot", f.slot, "err", err)
		}
	}
}

// readRTCP takes the page's keyframe requests (its decoder lost a frame or
// has just started) and lets the interceptors read the rest.
func (p *page) readRTCP(slot int) {
	for {
		pkts, _, err := p.senders[slot].ReadRTCP()
		if err != nil {
			return
		}
		for _, k := range pkts {
			switch k.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				p.wantKeyFrom(slot)
			}
		}
	}
}

func (p *page) wantKeyFrom(slot int) {
	p.needKey[slot].Store(true)
	p.d.keyframeFor(slot)
}
