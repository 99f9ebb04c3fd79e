package e2ee

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func material() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

// The contract's test vector, pinned in Go and in the patient page's JS.
func TestSafetyCodeVector(t *testing.T) {
	if got := SafetyCode(material()); got != "1978 4840" {
		t.Fatalf("SafetyCode(00..1f) = %q, want %q", got, "1978 4840")
	}
	other := material()
	other[31] ^= 1
	if SafetyCode(other) == SafetyCode(material()) {
		t.Fatal("a one-bit change in K gives the same safety code")
	}
}

// What WebCrypto's HKDF deriveKey gives for K = 00..1f (checked under Node).
func TestFrameKeyDerivation(t *testing.T) {
	k, err := NewKey(material())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := newKeyFromFrameKey([]byte{0x6d, 0x0d, 0xd7, 0xb3, 0xd6, 0xf4, 0xef, 0xde, 0x47, 0xab, 0x9a, 0x9e, 0x15, 0xab, 0xde, 0x76})
	iv := make([]byte, 12)
	frame := []byte{0xfc, 1, 2, 3, 4, 5}
	a, _ := k.encrypt("opus", frame, iv)
	b, _ := want.encrypt("opus", frame, iv)
	if !bytes.Equal(a, b) {
		t.Fatal("NewKey does not derive livekit-client's frame key")
	}
}

func TestNewKeyRejectsWrongSize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := NewKey(make([]byte, n)); !errors.Is(err, ErrMaterialSize) {
			t.Errorf("NewKey(%d bytes) err = %v", n, err)
		}
	}
}

func TestKeyNeverPrints(t *testing.T) {
	k, _ := NewKey(material())
	for _, s := range []string{k.String(), fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %x", k, k, k, k, k)} {
		if bytes.Contains([]byte(s), []byte{0x6d, 0x0d}) || !bytes.Contains([]byte(s), []byte("redacted")) {
			t.Errorf("key printed as %q", s)
		}
	}
}

func h264IDR() []byte {
	f := []byte{0, 0, 0, 1, 0x09, 0xf0} // AUD
	f = append(f, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x8d, 0x40)
	f = append(f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80)
	f = append(f, 0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x00, 0x00, 0x03, 0x00, 0x01, 0x02)
	for i := 0; i < 500; i++ {
		f = append(f, byte(i*7), 0, 0)
	}
	return f
}

func TestRoundTripAndHeaders(t *testing.T) {
	k, _ := NewKey(material())
	vp8key := append([]byte{0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01}, bytes.Repeat([]byte{0, 0, 1, 7}, 100)...)
	vp8delta := append([]byte{0x31, 0x02, 0x00}, bytes.Repeat([]byte{9, 0, 0}, 100)...)
	opus := []byte{0xfc, 0xff, 0xfe, 0, 0, 0}
	cases := []struct {
		codec       string
		in          []byte
		clear, want int
	}{
		{"vp8", vp8key, 10, 0}, {"vp8", vp8delta, 3, 0}, {"opus", opus, 1, 0}, {"h264", h264IDR(), 0, 0},
	}
	for _, c := range cases {
		enc, err := k.Encrypt(c.codec, c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.codec, err)
		}
		if c.clear > 0 && !bytes.Equal(enc[:c.clear], c.in[:c.clear]) {
			t.Errorf("%s: header not in the clear", c.codec)
		}
		if tail := c.in[max(len(c.in)-30, c.clear+1):]; len(tail) > 4 && bytes.Contains(enc, tail) {
			t.Errorf("%s: plaintext tail visible in ciphertext", c.codec)
		}
		dec, err := k.Decrypt(c.codec, enc)
		if err != nil {
			t.Fatalf("%s: decrypt: %v", c.codec, err)
		}
		want := c.in
		if c.codec == "h264" {
			// the receiver sees 4-byte start codes and no AUD
			hdr := []byte{0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x8d, 0x40, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80, 0, 0, 0, 1, 0x65, 0x88}
			if !bytes.Equal(enc[:len(hdr)], hdr) {
				t.Fatalf("h264 header % x", enc[:len(hdr)])
			}
			slice := bytes.Index(c.in, []byte{0x65, 0x88})
			if !bytes.Equal(dec[:len(hdr)], hdr) || !bytes.Equal(dec[len(hdr):], c.in[slice+2:]) {
				t.Fatalf("h264 round trip differs")
			}
			// no start code in the encrypted tail
			if _, ends, _ := naluIndices(enc); len(ends) != 3 {
				t.Errorf("encrypted h264 has %d NAL units, want 3 (SPS, PPS, slice)", len(ends))
			}
			continue
		}
		if !bytes.Equal(dec, want) {
			t.Errorf("%s: round trip differs", c.codec)
		}
	}
}

func TestWrongKeyAndTamper(t *testing.T) {
	k, _ := NewKey(material())
	m := material()
	m[0] = 0xff
	other, _ := NewKey(m)
	for _, codec := range []string{"vp8", "opus", "h264"} {
		in := h264IDR()
		if codec != "h264" {
			in = []byte{0x31, 2, 3, 4, 5, 6, 7, 8, 9}
		}
		enc, _ := k.Encrypt(codec, in)
		if _, err := other.Decrypt(codec, enc); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s wrong key: err = %v", codec, err)
		}
		bad := append([]byte(nil), enc...)
		bad[len(bad)-20] ^= 0x80
		if _, err := k.Decrypt(codec, bad); err == nil {
			t.Errorf("%s: tampered frame decrypted", codec)
		}
		bad = append([]byte(nil), enc...)
		bad[0] ^= 0x02 // the clear header is authenticated
		if codec != "h264" {
			if _, err := k.Decrypt(codec, bad); err == nil {
				t.Errorf("%s: tampered header decrypted", codec)
			}
		}
		if _, err := k.Decrypt(codec, in); err == nil {
			t.Errorf("%s: a clear frame decrypted", codec)
		}
	}
}

func TestH264WithoutSliceRefused(t *testing.T) {
	k, _ := NewKey(material())
	spsOnly := []byte{0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80}
	if _, err := k.Encrypt("h264", spsOnly); !errors.Is(err, ErrNoSlice) {
		t.Fatalf("SPS/PPS-only access unit: err = %v, want ErrNoSlice", err)
	}
	if _, err := k.Encrypt("vp9", []byte{1}); !errors.Is(err, ErrCodec) {
		t.Fatalf("vp9: err = %v", err)
	}
}

func FuzzDecrypt(f *testing.F) {
	k, _ := NewKey(material())
	enc, _ := k.Encrypt("h264", h264IDR())
	f.Add("h264", enc)
	f.Add("vp8", []byte{0x30, 1, 2})
	f.Add("opus", []byte{1})
	f.Fuzz(func(t *testing.T, codec string, b []byte) {
		_, _ = k.Decrypt(codec, b)
	})
}
