//go:build cgo

package livekit_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/mediadevices/pkg/codec/vpx"
	"github.com/pion/mediadevices/pkg/prop"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

// keylessFrames joins room as a participant without the key, a pion
// subscriber (this package's own connector with no E2EE), and returns the
// unit's video frames as they arrive, whole and as the SFU forwarded them.
// It runs in a process of its own (this test binary again,
// TestKeylessEavesdropperProcess): mediadevices' test camera opens once a
// process, and the unit holds it.
func keylessFrames(t *testing.T, lk *farend.LiveKit, room string, d time.Duration) [][]byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "frames")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKeylessEavesdropperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envEavesdropper+"=1", "KONSULT_KEYLESS_URL="+lk.URL, "KONSULT_KEYLESS_ROOM="+room,
		"KONSULT_KEYLESS_API="+lk.APIKey+":"+lk.APISecret, "KONSULT_KEYLESS_FOR="+d.String(), "KONSULT_KEYLESS_OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the keyless participant: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for len(b) >= 4 {
		n := int(binary.BigEndian.Uint32(b))
		if len(b) < 4+n {
			t.Fatalf("the keyless participant's frames file is cut short")
		}
		frames = append(frames, b[4:4+n])
		b = b[4+n:]
	}
	return frames
}

const envEavesdropper = "KONSULT_KEYLESS_EAVESDROPPER"

// TestKeylessEavesdropperProcess is keylessFrames' process, not a test of
// its own: it joins without a key and writes every remote video frame,
// length first, to KONSULT_KEYLESS_OUT.
func TestKeylessEavesdropperProcess(t *testing.T) {
	if os.Getenv(envEavesdropper) != "1" {
		t.Skip("the keyless participant's process for TestE2EEKeylessParticipantGetsOnlyCiphertext")
	}
	d, err := time.ParseDuration(os.Getenv("KONSULT_KEYLESS_FOR"))
	if err != nil {
		t.Fatal(err)
	}
	apiKey, apiSecret, _ := strings.Cut(os.Getenv("KONSULT_KEYLESS_API"), ":")
	var mu sync.Mutex
	var buf bytes.Buffer
	g := gate.New()
	conn, err := livekit.NewRTC(livekit.Config{URL: os.Getenv("KONSULT_KEYLESS_URL"), Room: os.Getenv("KONSULT_KEYLESS_ROOM"), Identity: "eavesdropper", APIKey: apiKey, APISecret: apiSecret},
		livekit.Media{Width: 640, Height: 480, FPS: 15, VideoCodec: "VP8", VideoBitRate: 300_000, AudioBitRate: 16_000,
			Camera: capture.TestDevice, Microphone: capture.TestDevice},
		livekit.RTCOptions{Speaker: playout.DeviceNull, OnVideoFrame: func(f playout.VideoFrame) {
			mu.Lock()
			defer mu.Unlock()
			_ = binary.Write(&buf, binary.BigEndian, uint32(len(f.Data)))
			buf.Write(f.Data)
		}}, g, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	time.Sleep(d)
	_ = call.Leave(context.Background())
	mu.Lock()
	defer mu.Unlock()
	if err := os.WriteFile(os.Getenv("KONSULT_KEYLESS_OUT"), buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// oneFrameReader hands libvpx's decoder one frame per Read.
type oneFrameReader struct {
	frames [][]byte
	i      int
}

func (r *oneFrameReader) Read(p []byte) (int, error) {
	if r.i >= len(r.frames) {
		return 0, io.EOF
	}
	r.i++
	return copy(p, r.frames[r.i-1]), nil
}

// decodeVP8 runs libvpx over frames in order: how many decoded, how many of
// those carry a capture stamp that reads back (the unit's picture), and
// how many the decoder refused.
func decodeVP8(t *testing.T, frames [][]byte) (decoded, stamped, refused int) {
	t.Helper()
	dec, err := vpx.NewDecoder(&oneFrameReader{frames: frames}, prop.Media{Video: prop.Video{Width: 640, Height: 480}})
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for range len(frames) + 5 {
		img, release, err := dec.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			refused++
			continue
		}
		decoded++
		if _, ok := capture.ReadStamp(img); ok {
			stamped++
		}
		release()
	}
	return decoded, stamped, refused
}

// "A third participant without the key decodes not a single frame of the
// unit's video": a pion subscriber without the key, in the unit's
// encrypted call through a real LiveKit, checks every frame it gets.
//   - Each one is livekit-client's frame format whole (or the SFU's own
//     blank picture, too small to show anything): the bytes past the
//     codec header livekit-client leaves clear (VP8's 10 or 3, H.264's
//     parameter sets and a slice's first two bytes) open and authenticate
//     only under the consultation's key, and match the picture's own bytes
//     no more often than chance.
//   - VP8: libvpx, given the frames as they came, reads the unit's capture
//     stamp from none of them (it may take a few for pictures: VP8's frame
//     header is in clear, the rest is noise); given the same frames
//     decrypted, from nearly all (so the picture was there to be read).
//
// Chromium without the key (TestE2EECall) reads no stamp either.
func TestE2EEKeylessParticipantGetsOnlyCiphertext(t *testing.T) {
	lk := farend.StartLiveKit(t)
	key, err := e2ee.NewKey(e2eeMaterial(5))
	if err != nil {
		t.Fatal(err)
	}
	for _, codec := range []string{"VP8", "H264"} {
		t.Run(codec, func(t *testing.T) {
			room := "keyless-" + strings.ToLower(codec)
			joinE2EE(t, lk, room, codec, key, io.Discard, nil)
			frames := keylessFrames(t, lk, room, 6*time.Second)
			if len(frames) < 60 {
				t.Fatalf("the keyless participant got %d frames of the unit's video in 6 s", len(frames))
			}
			lc := strings.ToLower(codec)
			var plain [][]byte
			clearBytes, total, same, compared, blank := 0, 0, 0, 0, 0
			for i, f := range frames {
				p, err := key.Decrypt(lc, f)
				if err != nil {
					// The SFU's own blank picture is not the unit's and
					// cannot carry the room: LiveKit's 8×8 VP8 key frame
					// (10 02 00 9d 01 2a 08 00 08 00 …, 74-75 bytes as
					// received), which it writes as a subscriber's down
					// track closes. Seen as the last 1-3 frames in about
					// one run in ten. Anything else is a failure.
					if lc == "vp8" && sfuBlankFrame(f) {
						blank++
						t.Logf("frame %d of %d (%d bytes) is the SFU's blank picture, not the unit's: % x", i, len(frames), len(f), f[:min(len(f), 16)])
						continue
					}
					t.Fatalf("frame %d of %d (%d bytes) is not livekit-client's encrypted format whole: %v (% x)", i, len(frames), len(f), err, f[:min(len(f), 16)])
				}
				plain = append(plain, p)
				n := clearHeader(t, lc, f)
				clearBytes += n
				total += len(f)
				if !bytes.Equal(f[:n], p[:n]) {
					t.Fatalf("frame %d: the clear header differs from the plaintext's", i)
				}
				for j := n; j < len(p) && j < len(f); j++ {
					compared++
					if f[j] == p[j] {
						same++
					}
				}
			}
			// Chance is 1/256 a byte; allow twice that.
			if compared == 0 || float64(same)/float64(compared) > 2.0/256 {
				t.Fatalf("past the clear header %d of %d bytes equal the picture's (chance: 1 in 256)", same, compared)
			}
			t.Logf("%s: %d frames (%d the SFU's blank picture), %d of %d bytes in clear (the codec headers livekit-client keeps), %d of %d bytes past them equal the plaintext's (chance 1/256)",
				codec, len(frames), blank, clearBytes, total, same, compared)
			if codec != "VP8" {
				return
			}
			dec, stamped, refused := decodeVP8(t, frames)
			pdec, pstamped, _ := decodeVP8(t, plain)
			t.Logf("libvpx: as received %d decoded, %d refused, %d stamps read; decrypted %d decoded, %d stamps read", dec, refused, stamped, pdec, pstamped)
			if stamped != 0 {
				t.Errorf("libvpx read the unit's capture stamp from %d frames the keyless participant got", stamped)
			}
			if pstamped < len(plain)/2 {
				t.Errorf("decrypted, only %d of %d frames gave the unit's stamp back: the check above proves nothing", pstamped, len(plain))
			}
		})
	}
}

// clearHeader is how many leading bytes of an encrypted frame
// livekit-client leaves in clear.
func clearHeader(t *testing.T, codec string, f []byte) int {
	t.Helper()
	if codec == "vp8" {
		if f[0]&1 == 0 {
			return 10
		}
		return 3
	}
	// H.264: up to and including the first slice NAL's header byte and
	// the next one.
	for i := 0; i+3 < len(f); i++ {
		if f[i] == 0 && f[i+1] == 0 && f[i+2] == 1 {
			if typ := f[i+3] & 0x1f; typ == 1 || typ == 5 {
				return i + 3 + 2
			}
		}
	}
	t.Fatalf("an H.264 frame without a slice: % x", f[:min(len(f), 32)])
	return 0
}

// sfuBlankFrame tells a VP8 key frame of at most 16×16 pixels: what an SFU
// sends to blank a paused video, never the unit's 640×480 camera.
func sfuBlankFrame(f []byte) bool {
	if len(f) < 10 || f[0]&1 != 0 || f[3] != 0x9d || f[4] != 0x01 || f[5] != 0x2a {
		return false
	}
	w, h := int(binary.LittleEndian.Uint16(f[6:]))&0x3fff, int(binary.LittleEndian.Uint16(f[8:]))&0x3fff
	return w <= 16 && h <= 16
}

func TestSFUBlankFrameIsOnlyATinyKeyFrame(t *testing.T) {
	key := func(w, h uint16) []byte {
		f := []byte{0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0, 0, 0, 0, 0x00, 0x47}
		binary.LittleEndian.PutUint16(f[6:], w)
		binary.LittleEndian.PutUint16(f[8:], h)
		return f
	}
	inter := key(8, 8)
	inter[0] |= 1
	for _, c := range []struct {
		name  string
		f     []byte
		blank bool
	}{
		{"8x8 key frame", key(8, 8), true},
		{"640x480 key frame", key(640, 480), false},
		{"inter frame", inter, false},
		{"too short", key(8, 8)[:6], false},
	} {
		if got := sfuBlankFrame(c.f); got != c.blank {
			t.Errorf("%s: sfuBlankFrame = %v, want %v", c.name, got, c.blank)
		}
	}
}
