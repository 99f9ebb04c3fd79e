// Package e2ee encrypts and decrypts whole encoded media frames end to end,
// in the frame format livekit-client 2.23.0's E2EE worker uses with an
// ExternalE2EEKeyProvider (one shared key, key index 0, no ratchet), so a
// browser far end decrypts what the unit sends and the unit decrypts what
// the browser sends. The SFU forwards frames it cannot read.
//
// A frame is
//
//	header[N] ‖ AES-128-GCM(ciphertext ‖ tag) ‖ IV(12) ‖ 0x0C ‖ keyIndex
//
// with the N clear header bytes as additional data. N is 1 for Opus (the TOC
// byte), 10 for a VP8 key frame and 3 for a VP8 delta frame, and for H.264
// the offset of the first slice NAL unit plus 2. For H.264 the header's start
// codes are 4 bytes (what a receiver's depacketiser rebuilds), AUD and filler
// NAL units are left out of it (an RTP payloader drops them), and everything
// after the header is RBSP-escaped so no start code appears in ciphertext.
//
// The frame key is HKDF-SHA256(material, salt "LKFrameEncryptionKey",
// info 128 zero bytes), 16 bytes: what livekit-client's
// ExternalE2EEKeyProvider.setKey derives from raw key bytes.
package e2ee

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Salt is livekit-client's ratchet salt, used as the HKDF salt.
const Salt = "LKFrameEncryptionKey"

const (
	ivLength = 12
	tagLen   = 16
	keyIndex = 0
	trailer  = 2 // IV length byte, key index
)

// Errors a caller can tell apart; none of them carries key material.
var (
	ErrShortFrame   = errors.New("e2ee: frame too short")
	ErrNoSlice      = errors.New("e2ee: h264 frame has no slice NAL unit")
	ErrDecrypt      = errors.New("e2ee: frame does not decrypt with this key")
	ErrCodec        = errors.New("e2ee: codec not supported")
	ErrKeyIndex     = errors.New("e2ee: frame names another key index")
	ErrMaterialSize = errors.New("e2ee: key material must be 32 bytes")
)

// Key holds the derived AES-128-GCM frame key. It never prints its bytes.
type Key struct {
	aead cipher.AEAD
}

// NewKey derives the frame key from the consultation's key material K
// (32 random bytes).
func NewKey(material []byte) (*Key, error) {
	if len(material) != 32 {
		return nil, ErrMaterialSize
	}
	k, err := hkdf.Key(sha256.New, material, []byte(Salt), string(make([]byte, 128)), 16)
	if err != nil {
		return nil, fmt.Errorf("e2ee: derive frame key: %w", err)
	}
	return newKeyFromFrameKey(k)
}

func newKeyFromFrameKey(k []byte) (*Key, error) {
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("e2ee: aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("e2ee: gcm: %w", err)
	}
	return &Key{aead: aead}, nil
}

// String redacts the key.
func (k *Key) String() string { return "e2ee key (redacted)" }

// GoString redacts the key for %#v too.
func (k *Key) GoString() string { return k.String() }

// Format redacts the key whatever the verb.
func (k *Key) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// SafetyCode is the short code both sides show so people can compare keys:
// SHA-256("konsult-safety-code-v1" ‖ K), the first 8 bytes as a big-endian
// uint64 mod 10^8, as "0123 4567".
func SafetyCode(material []byte) string {
	h := sha256.New()
	h.Write([]byte("konsult-safety-code-v1"))
	h.Write(material)
	n := binary.BigEndian.Uint64(h.Sum(nil)[:8]) % 100000000
	return fmt.Sprintf("%04d %04d", n/10000, n%10000)
}

// Encrypt encrypts one whole encoded frame. codec is "h264", "vp8" or
// "opus". An empty frame (Opus DTX) is returned as it is, as the worker does.
//
// For H.264 it draws IVs until the ciphertext's slice header reads, to a
// receiver's depacketizer, as the plaintext's does (slice.go says why).
func (k *Key) Encrypt(codec string, frame []byte) ([]byte, error) {
	if len(frame) == 0 {
		return frame, nil
	}
	header, body, nalu, err := split(codec, frame)
	if err != nil {
		return nil, err
	}
	// Only the slice header's first bytes are compared: header ends with
	// the slice's NAL header and first byte, body goes on from there.
	var want [3]uint32
	check := false
	if nalu {
		want, check = sliceFields(append(header[len(header)-2:len(header):len(header)], body[:min(len(body), 11)]...))
	}
	var iv [ivLength]byte
	for try := 0; ; try++ {
		if _, err := rand.Read(iv[:]); err != nil {
			return nil, fmt.Errorf("e2ee: iv: %w", err)
		}
		out := k.seal(header, body, iv[:], nalu)
		if !check || try == maxIVTries-1 {
			return out, nil
		}
		if got, ok := sliceFields(out[len(header)-2 : min(len(out), len(header)+11)]); ok && got == want {
			return out, nil
		}
	}
}

// maxIVTries bounds Encrypt's draws; each succeeds about half the time, so
// the bound is never reached in practice (2^-32).
const maxIVTries = 32

func (k *Key) encrypt(codec string, frame, iv []byte) ([]byte, error) {
	if len(frame) == 0 {
		return frame, nil
	}
	header, body, nalu, err := split(codec, frame)
	if err != nil {
		return nil, err
	}
	return k.seal(header, body, iv, nalu), nil
}

// split is frame's clear header (the additional data) and the body to
// encrypt; nalu says the body is H.264 (RBSP-escaped once sealed).
func split(codec string, frame []byte) (header, body []byte, nalu bool, err error) {
	switch codec {
	case "opus":
		return frame[:1], frame[1:], false, nil
	case "vp8":
		n := min(vp8Header(frame), len(frame))
		return frame[:n], frame[n:], false, nil
	case "h264":
		h, rest, err := h264SendHeader(frame)
		return h, rest, true, err
	default:
		return nil, nil, false, fmt.Errorf("%w: %q", ErrCodec, codec)
	}
}

// seal encrypts body with header as additional data under iv, in
// livekit-client's frame format.
func (k *Key) seal(header, body, iv []byte, nalu bool) []byte {
	sealed := make([]byte, 0, len(body)+tagLen+ivLength+trailer)
	sealed = k.aead.Seal(sealed, iv, body, header)
	sealed = append(sealed, iv...)
	sealed = append(sealed, ivLength, keyIndex)
	if nalu {
		sealed = writeRbsp(sealed)
	}
	out := make([]byte, 0, len(header)+len(sealed))
	out = append(out, header...)
	return append(out, sealed...)
}

// Decrypt decrypts one whole frame encrypted by livekit-client or Encrypt.
// A frame that fails is an error (ErrDecrypt for a wrong key or a tampered
// frame); the caller drops it.
func (k *Key) Decrypt(codec string, frame []byte) ([]byte, error) {
	if len(frame) == 0 {
		return frame, nil
	}
	var n int
	nalu := false
	switch codec {
	case "opus":
		n = 1
	case "vp8":
		n = vp8Header(frame)
	case "h264":
		off, err := h264RecvHeader(frame)
		if err != nil {
			return nil, err
		}
		n, nalu = off, true
	default:
		return nil, fmt.Errorf("%w: %q", ErrCodec, codec)
	}
	if len(frame) < n {
		return nil, ErrShortFrame
	}
	header, rest := frame[:n], frame[n:]
	if nalu && needsRbspUnescaping(rest) {
		rest = parseRbsp(rest)
	}
	if len(rest) < tagLen+trailer {
		return nil, ErrShortFrame
	}
	ivLen := int(rest[len(rest)-2])
	if rest[len(rest)-1] != keyIndex {
		return nil, ErrKeyIndex
	}
	if ivLen != ivLength || len(rest) < tagLen+ivLen+trailer {
		return nil, ErrShortFrame
	}
	iv := rest[len(rest)-trailer-ivLen : len(rest)-trailer]
	ct := rest[:len(rest)-trailer-ivLen]
	out := make([]byte, n, n+len(ct)-tagLen)
	copy(out, header)
	out, err := k.aead.Open(out, iv, ct, header)
	if err != nil {
		return nil, ErrDecrypt
	}
	return out, nil
}

// vp8Header is the clear header length: 10 for a key frame (the frame tag's
// P bit clear), 3 for a delta frame.
func vp8Header(frame []byte) int {
	if frame[0]&1 == 0 {
		return 10
	}
	return 3
}
