package e2ee

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// idrFrame is an openh264-style key frame: SPS, PPS, then an IDR slice
// whose header starts first_mb_in_slice 0, slice_type 7 (I, all slices),
// pic_parameter_set_id 0: the first two bytes fill exactly the clear
// byte, so the PPS id is the first bit livekit's format encrypts.
func idrFrame(seed uint64) []byte {
	f := []byte{0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0x80,
		0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
		0, 0, 0, 1, 0x65, 0x88, 0x84}
	r := rand.New(rand.NewPCG(seed, 1))
	for range 2000 {
		f = append(f, byte(r.IntN(255)+1))
	}
	return f
}

// An encrypted key frame reads, to a receiver's depacketizer (what
// Chromium's SPS/PPS tracker checks before the decryption worker sees the
// frame), as the same slice with the same PPS id; drawn IVs alone get it
// wrong about half the time (then Chromium drops the key frame and the
// picture stalls until the next). It still decrypts.
func TestEncryptedKeyFrameKeepsItsPPSID(t *testing.T) {
	k, err := NewKey(material())
	if err != nil {
		t.Fatal(err)
	}
	want, ok := sliceHeaderStart(idrFrame(0))
	if !ok || want != [3]uint32{0, 7, 0} {
		t.Fatalf("plaintext slice header %v %v, want first_mb 0, slice_type 7, pps 0", want, ok)
	}
	wrongWithoutDraws := 0
	for i := range 200 {
		frame := idrFrame(uint64(i))
		out, err := k.Encrypt("h264", frame)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := sliceHeaderStart(out); !ok || got != want {
			t.Fatalf("frame %d: the encrypted key frame reads as slice %v (%v), want %v", i, got, ok, want)
		}
		back, err := k.Decrypt("h264", out)
		if err != nil || !bytes.Equal(back[len(back)-2000:], frame[len(frame)-2000:]) {
			t.Fatalf("frame %d: does not decrypt: %v", i, err)
		}
		iv := make([]byte, ivLength)
		iv[0], iv[1] = byte(i), byte(i>>8)
		one, err := k.encrypt("h264", frame, iv)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := sliceHeaderStart(one); !ok || got != want {
			wrongWithoutDraws++
		}
	}
	if wrongWithoutDraws < 50 {
		t.Fatalf("a single IV misread the PPS id in only %d of 200 key frames: the test frame does not put it in ciphertext", wrongWithoutDraws)
	}
	t.Logf("one IV per frame: %d of 200 key frames would read with another slice header", wrongWithoutDraws)
}
