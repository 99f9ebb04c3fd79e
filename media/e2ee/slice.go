package e2ee

// A receiver's RTP depacketizer reads the start of each H.264 slice header
// before any frame transform sees the frame: WebRTC's
// PpsParser::ParsePpsIdFromSlice reads first_mb_in_slice, slice_type and
// pic_parameter_set_id, and its SPS/PPS tracker drops an IDR whose PPS id it
// has not been sent, asking for a new key frame. livekit-client's frame
// format leaves only the slice's first two bytes in clear (NAL header and
// one byte), so for openh264's I slices (slice_type 7: first_mb_in_slice and
// slice_type fill that byte exactly) the PPS id is read from ciphertext:
// random, and half of all encrypted key frames were dropped at Chromium
// (the patient's page then ran at 14-26 fps instead of 30). Encrypt
// therefore draws IVs until the ciphertext's slice header reads as the
// plaintext's (about two tries a key frame). That gives away nothing: the
// values are those of the clear SPS/PPS, and the IV stays random and never
// repeats.

// sliceFields is first_mb_in_slice, slice_type and pic_parameter_set_id
// of the slice NAL unit starting at nal[0] (its header), read as WebRTC
// does (RBSP unescaped); ok is false if they do not parse. 12 bytes hold
// them for any picture a unit sends (first_mb below 2^15, slice_type
// below 10, PPS id below 256).
func sliceFields(nal []byte) (v [3]uint32, ok bool) {
	if len(nal) < 2 {
		return v, false
	}
	r := bitReader{b: parseRbsp(nal[1:min(len(nal), 13)])}
	for k := range v {
		if v[k], ok = r.ue(); !ok {
			return v, false
		}
	}
	return v, true
}

// sliceHeaderStart is sliceFields of the first slice NAL unit in frame.
func sliceHeaderStart(frame []byte) (v [3]uint32, ok bool) {
	starts, ends, found := naluIndices(frame)
	if !found {
		return v, false
	}
	for j, i := range starts {
		if isSlice(frame[i]) {
			return sliceFields(frame[i:ends[j]])
		}
	}
	return v, false
}

// bitReader reads exp-Golomb codes MSB first.
type bitReader struct {
	b   []byte
	pos int
}

func (r *bitReader) bit() (uint32, bool) {
	if r.pos >= 8*len(r.b) {
		return 0, false
	}
	v := uint32(r.b[r.pos/8]>>(7-r.pos%8)) & 1
	r.pos++
	return v, true
}

// ue reads an unsigned exp-Golomb code (at most 31 leading zeros).
func (r *bitReader) ue() (uint32, bool) {
	zeros := 0
	for {
		b, ok := r.bit()
		if !ok {
			return 0, false
		}
		if b == 1 {
			break
		}
		if zeros++; zeros > 31 {
			return 0, false
		}
	}
	v := uint32(1)
	for range zeros {
		b, ok := r.bit()
		if !ok {
			return 0, false
		}
		v = v<<1 | b
	}
	return v - 1, true
}
