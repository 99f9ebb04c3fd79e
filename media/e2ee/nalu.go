package e2ee

// H.264 NAL unit handling as livekit-client's worker does it (naluUtils.ts,
// utils.ts in livekit-client 2.23.0).

const (
	naluSliceNonIDR = 1
	naluSliceIDR    = 5
	naluAUD         = 9
	naluFiller      = 12
)

func isSlice(b byte) bool { t := b & 0x1f; return t == naluSliceNonIDR || t == naluSliceIDR }

// naluIndices returns where each NAL unit starts (after its start code) and
// where it ends (trailing zero bytes removed), as findNALUIndices does. ok is
// false when the stream does not begin with a start code.
func naluIndices(s []byte) (starts, ends []int, ok bool) {
	start, pos := 0, 0
	search := len(s) - 3
	for pos < search {
		for pos < search {
			if pos < search-1 && s[pos] == 0 && s[pos+1] == 0 && s[pos+2] == 0 && s[pos+3] == 1 {
				break
			}
			if s[pos] == 0 && s[pos+1] == 0 && s[pos+2] == 1 {
				break
			}
			pos++
		}
		if pos >= search {
			pos = len(s)
		}
		end := pos
		for end > start && s[end-1] == 0 {
			end--
		}
		if start == 0 {
			if end != start {
				return nil, nil, false
			}
		} else {
			starts = append(starts, start)
			ends = append(ends, end)
		}
		sc := 3
		if pos < len(s)-3 && s[pos] == 0 && s[pos+1] == 0 && s[pos+2] == 0 && s[pos+3] == 1 {
			sc = 4
		}
		start = pos + sc
		pos = start
	}
	return starts, ends, true
}

// h264RecvHeader is the clear header length of a received frame: the first
// slice NAL unit's offset + 2.
func h264RecvHeader(frame []byte) (int, error) {
	starts, _, ok := naluIndices(frame)
	if !ok {
		return 0, ErrNoSlice
	}
	for _, i := range starts {
		if isSlice(frame[i]) {
			if i+2 > len(frame) {
				return 0, ErrShortFrame
			}
			return i + 2, nil
		}
	}
	return 0, ErrNoSlice
}

// h264SendHeader builds the clear header as a receiver will rebuild it: each
// NAL unit before the first slice with a 4-byte start code, AUD and filler
// left out (RTP payloaders drop them), then the slice's start code and its
// first two bytes. rest is everything after those two bytes.
func h264SendHeader(frame []byte) (header, rest []byte, err error) {
	starts, ends, ok := naluIndices(frame)
	if !ok {
		return nil, nil, ErrNoSlice
	}
	for j, i := range starts {
		t := frame[i] & 0x1f
		if isSlice(frame[i]) {
			if i+2 > len(frame) {
				return nil, nil, ErrShortFrame
			}
			header = append(header, 0, 0, 0, 1)
			header = append(header, frame[i:i+2]...)
			return header, frame[i+2:], nil
		}
		if t == naluAUD || t == naluFiller {
			continue
		}
		header = append(header, 0, 0, 0, 1)
		header = append(header, frame[i:ends[j]]...)
	}
	return nil, nil, ErrNoSlice
}

func needsRbspUnescaping(b []byte) bool {
	for i := 0; i < len(b)-3; i++ {
		if b[i] == 0 && b[i+1] == 0 && b[i+2] == 3 {
			return true
		}
	}
	return false
}

func parseRbsp(s []byte) []byte {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		if len(s)-i >= 3 && s[i] == 0 && s[i+1] == 0 && s[i+2] == 3 {
			out = append(out, s[i], s[i+1])
			i += 3
		} else {
			out = append(out, s[i])
			i++
		}
	}
	return out
}

func writeRbsp(in []byte) []byte {
	out := make([]byte, 0, len(in)+len(in)/64+4)
	zeros := 0
	for _, b := range in {
		if b <= 3 && zeros >= 2 {
			out = append(out, 3)
			zeros = 0
		}
		out = append(out, b)
		if b == 0 {
			zeros++
		} else {
			zeros = 0
		}
	}
	return out
}
