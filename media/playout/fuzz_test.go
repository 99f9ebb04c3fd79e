package playout

import (
	"encoding/binary"
	"testing"

	"github.com/pion/rtp"
)

// FuzzDepacketize feeds random RTP payload sequences, as a hostile far end
// can send them through the SFU, into H.264, VP8 and VP9 reassembly: it never
// panics, never holds more than the frame cap for an unfinished frame, and
// never hands out a frame over it. The cap is small here so that short
// inputs reach it.
//
// Input: a codec byte (0 H.264, 1 VP8, 2 VP9, modulo 3), a cap byte, then records of [2-byte length][flags]
// [repeat][payload]; flags bit 0 is the marker, bit 1 a new timestamp, bit 2
// a sequence jump; repeat sends the payload that many more times (a few
// bytes of input become a flood).
func FuzzDepacketize(f *testing.F) {
	rec := func(payload []byte, flags, repeat byte) []byte {
		b := binary.BigEndian.AppendUint16(nil, uint16(len(payload)))
		return append(append(b, flags, repeat), payload...)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	// H.264: a keyframe in FU-A fragments, then start bits without an end.
	f.Add(cat([]byte{0, 8}, rec(fuA(true, false, []byte{1, 2, 3}), 2, 0), rec(fuA(false, true, []byte{4}), 1, 0),
		rec(fuA(true, false, make([]byte, 200)), 2, 50)))
	// H.264: STAP-A with SPS and PPS, a single IDR.
	f.Add(cat([]byte{0, 4}, rec([]byte{24, 0, 2, 0x67, 1, 0, 2, 0x68, 2}, 2, 0), rec([]byte{0x65, 9, 9}, 1, 0)))
	// VP8: a keyframe header in two packets, then a start flood.
	f.Add(cat([]byte{1, 8}, rec([]byte{0x10, 0x50, 0, 0, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0}, 2, 0), rec([]byte{0x00, 7, 7}, 1, 0),
		rec(append([]byte{0x10}, make([]byte, 300)...), 2, 100)))
	// VP9: a frame's begin (B) and end (E) packets, then begins without an end.
	f.Add(cat([]byte{2, 8}, rec([]byte{0x08, 1, 2, 3}, 2, 0), rec([]byte{0x04, 4}, 1, 0),
		rec(append([]byte{0x08}, make([]byte, 300)...), 2, 100)))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		codec := []string{"H264", "VP8", "VP9"}[int(data[0])%3]
		limit := 256 + int(data[1])*64 // 256 B to 16 KiB
		ra, err := newReassembler(codec, limit)
		if err != nil {
			t.Fatal(err)
		}
		data = data[2:]
		var s rtpStream
		emit := func(frame []byte) {
			if len(frame) > limit {
				t.Fatalf("%s: a %d-byte frame handed out; cap %d", codec, len(frame), limit)
			}
		}
		for len(data) >= 4 {
			n := int(binary.BigEndian.Uint16(data))
			flags, repeat := data[2], int(data[3])
			data = data[4:]
			n = min(n, len(data))
			payload := data[:n]
			data = data[n:]
			for i := 0; i <= repeat; i++ {
				if flags&4 != 0 {
					s.seq += uint16(n)
				}
				pkt := s.next(payload, flags&1 != 0, flags&2 != 0)
				ra.push(&rtp.Packet{Header: pkt.Header, Payload: append([]byte(nil), payload...)}, emit)
				if h := ra.held(); h > limit {
					t.Fatalf("%s: holds %d bytes of an unfinished frame; cap %d", codec, h, limit)
				}
			}
		}
	})
}
