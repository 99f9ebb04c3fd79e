package playout

import (
	"errors"
	"strings"

	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4/pkg/media/samplebuilder"
)

// MaxFrameBytes caps one remote video frame, and with it what a far-end
// participant can make the unit hold for a frame that never completes.
//
// Sized from the largest legitimate frame: the far end is a browser, whose
// largest picture is 1920x1080; its raw 4:2:0 picture is 3.1 MB, and a real
// encoder's keyframe at that size and at the highest bitrate a browser sends
// (about 8 Mbit/s) stays under 600 KB. 2 MiB is more than three times that,
// and two thirds of the raw picture (an encoder emitting more than the raw
// picture is broken or hostile). A frame over it is dropped whole.
const MaxFrameBytes = 2 << 20

// maxLatePackets is how many packets the sample builder waits for a late
// one; it also bounds how many packets it holds (each at most pion's 1500
// byte receive MTU: about 190 KB).
const maxLatePackets = 128

var (
	errFrameTooLarge = errors.New("remote video: frame over the size cap dropped")
	errOrphanFU      = errors.New("remote video: fragment without its start dropped")
)

// boundedH264 is pion's H.264 depacketiser with its FU-A buffer kept in
// check. pion appends every FU-A fragment to one buffer that only an end
// bit clears, so start bits without an end grow it for ever: here a start
// bit begins a new NAL, a fragment without a start is dropped, and a NAL
// that reaches the cap is dropped.
type boundedH264 struct {
	pkt   codecs.H264Packet
	limit int
	inFU  bool
	fu    int // bytes in the unfinished FU-A
}

const (
	h264FUA      = 28
	fuStartBit   = 0x80
	fuEndBit     = 0x40
	fuHeaderSize = 2
)

func (d *boundedH264) reset() {
	d.pkt = codecs.H264Packet{}
	d.inFU, d.fu = false, 0
}

func (d *boundedH264) Unmarshal(b []byte) ([]byte, error) {
	if len(b) < fuHeaderSize || b[0]&0x1f != h264FUA {
		return d.pkt.Unmarshal(b)
	}
	if b[1]&fuStartBit != 0 {
		d.reset() // an unfinished NAL before it lost its end: it is gone
		d.inFU = true
	}
	if !d.inFU {
		return nil, errOrphanFU
	}
	d.fu += len(b) - fuHeaderSize
	if d.fu > d.limit {
		d.reset()
		return nil, errFrameTooLarge
	}
	out, err := d.pkt.Unmarshal(b)
	if b[1]&fuEndBit != 0 || err != nil {
		d.inFU, d.fu = false, 0
	}
	return out, err
}

func (d *boundedH264) IsPartitionHead(b []byte) bool { return d.pkt.IsPartitionHead(b) }
func (d *boundedH264) IsPartitionTail(m bool, b []byte) bool {
	return d.pkt.IsPartitionTail(m, b)
}
func (d *boundedH264) held() int { return d.fu }

// heldDepacketizer is a depacketiser that may keep bytes between packets.
type heldDepacketizer interface {
	rtp.Depacketizer
	held() int
}

// stateless wraps pion's VP8 and VP9 depacketisers, which keep nothing
// between packets but the last one.
type stateless struct{ rtp.Depacketizer }

func (stateless) held() int { return 0 }

// reassembler turns one track's RTP packets into whole frames, none over
// limit, holding at most limit bytes of an unfinished one.
type reassembler struct {
	codec   string
	limit   int
	dep     heldDepacketizer
	sb      *samplebuilder.SampleBuilder
	dropped uint64 // frames over the cap
}

// codecOf is the codec name of a track's MIME type ("video/H264" → "H264").
func codecOf(mime string) string {
	return strings.ToUpper(strings.TrimPrefix(strings.ToLower(mime), "video/"))
}

func newReassembler(codec string, limit int) (*reassembler, error) {
	var dep heldDepacketizer
	switch codec {
	case "VP8":
		dep = stateless{&codecs.VP8Packet{}}
	case "H264":
		dep = &boundedH264{limit: limit}
	case "VP9":
		dep = stateless{&codecs.VP9Packet{}}
	default:
		return nil, errors.New("remote video: codec " + codec + " is not supported on the unit")
	}
	return &reassembler{codec: codec, limit: limit, dep: dep, sb: samplebuilder.New(maxLatePackets, dep, 90000)}, nil
}

// push takes one packet and hands every frame it completes to emit.
func (r *reassembler) push(pkt *rtp.Packet, emit func([]byte)) {
	r.sb.Push(pkt)
	for s := r.sb.Pop(); s != nil; s = r.sb.Pop() {
		if len(s.Data) == 0 {
			continue // the start or middle of a fragmented NAL: nothing to show yet
		}
		if len(s.Data) > r.limit {
			r.dropped++
			continue
		}
		emit(s.Data)
	}
}

// held is how many bytes wait for the rest of an unfinished frame in the
// depacketiser.
func (r *reassembler) held() int { return r.dep.held() }
