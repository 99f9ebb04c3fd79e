package e2ee

import (
	"math/rand/v2"
	"testing"
)

// h264Frame is an H.264 access unit of about n bytes as a 720p30 camera
// sends it: SPS, PPS and an IDR slice for a key frame, one P slice for a
// delta frame; the slice data is random (coded video looks like noise) with
// the odd zero run, so RBSP escaping does real work.
func h264Frame(n int, key bool) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var f []byte
	if key {
		f = append(f, 0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x8d, 0x40, 0x50, 0x1e, 0xd0, 0x0f, 0x08, 0x84, 0x6a)
		f = append(f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80, 0, 0, 0, 1, 0x65, 0x88, 0x84)
	} else {
		f = append(f, 0, 0, 0, 1, 0x41, 0x9a, 0x02)
	}
	for len(f) < n {
		b := byte(r.Uint32())
		if b < 2 && len(f)%5 == 0 {
			f = append(f, 0, 0, 3) // already escaped zeros, as an encoder writes them
			continue
		}
		f = append(f, b)
	}
	return f
}

func benchFrame(b *testing.B, codec string, frame []byte) {
	k, _ := NewKey(material())
	enc, err := k.Encrypt(codec, frame)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encrypt", func(b *testing.B) {
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			if _, err := k.Encrypt(codec, frame); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decrypt", func(b *testing.B) {
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			if _, err := k.Decrypt(codec, enc); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFrame: encrypt and decrypt one frame at 720p30 sizes (H.264 key
// 45 KB, delta 8 KB; VP8 the same) and one 20 ms Opus frame at 32 kbit/s.
func BenchmarkFrame(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	vp8 := func(n int, key bool) []byte {
		f := make([]byte, n)
		for i := range f {
			f[i] = byte(r.Uint32())
		}
		if key {
			f[0] &^= 1
		} else {
			f[0] |= 1
		}
		return f
	}
	opus := vp8(80, true)
	b.Run("h264-key-45KB", func(b *testing.B) { benchFrame(b, "h264", h264Frame(45_000, true)) })
	b.Run("h264-delta-8KB", func(b *testing.B) { benchFrame(b, "h264", h264Frame(8_000, false)) })
	b.Run("vp8-key-45KB", func(b *testing.B) { benchFrame(b, "vp8", vp8(45_000, true)) })
	b.Run("vp8-delta-8KB", func(b *testing.B) { benchFrame(b, "vp8", vp8(8_000, false)) })
	b.Run("opus-80B", func(b *testing.B) { benchFrame(b, "opus", opus) })
}
