package livekit_test

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/syncbuf"
	"github.com/konsult/konsult/media/capture"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/livekit"
	"github.com/konsult/konsult/media/playout"
)

func e2eeMaterial(seed byte) []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = seed + byte(i)*17
	}
	return k
}

// keyForms is every form of K and of the frame key derived from it that
// could leak into text.
func keyForms(k []byte) []string {
	fk, _ := hkdf.Key(sha256.New, k, []byte(e2ee.Salt), string(make([]byte, 128)), 16)
	var out []string
	for _, b := range [][]byte{k, fk} {
		out = append(out, hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)),
			base64.RawURLEncoding.EncodeToString(b), base64.StdEncoding.EncodeToString(b), string(b), fmt.Sprint(b))
	}
	return out
}

func joinE2EE(t *testing.T, lk *farend.LiveKit, room, codec string, key *e2ee.Key, logs io.Writer, onFrame func(playout.VideoFrame)) (*livekit.RTCCall, *gate.Gate, *livekit.RTCConnector) {
	t.Helper()
	g := gate.New()
	conn, err := livekit.NewRTC(livekit.Config{
		URL: lk.URL, Room: room, Identity: "unit-1", APIKey: lk.APIKey, APISecret: lk.APISecret, DisconnectGrace: 15 * time.Second,
	}, livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: codec, VideoBitRate: 1_000_000, AudioBitRate: 32_000,
		Camera: capture.TestDevice, Microphone: capture.TestDevice, E2EE: key, Stamp: true},
		livekit.RTCOptions{Speaker: playout.DeviceNull, OnVideoFrame: onFrame}, g, slog.New(slog.NewTextHandler(io.MultiWriter(os.Stderr, logs), &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call, err := conn.Join(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	t.Cleanup(func() { _ = call.Leave(context.Background()) })
	g.Set(gate.State{Video: true, Audio: true})
	return call, g, conn
}

// End to end through a real LiveKit and real headless Chromium running
// livekit-client's E2EE: a patient with the key sees and hears the unit and
// the unit shows the patient; a participant without the key and one with
// another key get no picture; the unit counts the frames it cannot
// decrypt; PRIVACY puts the slate on the encrypted far end; and no form of
// the key is in anything the unit logged. One LiveKit for all.
func TestE2EECall(t *testing.T) {
	lk := farend.StartLiveKit(t)
	material := e2eeMaterial(3)
	key, err := e2ee.NewKey(material)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{} // everything the unit logs, for the key scan
	var errs []string
	for _, codec := range []string{"H264", "VP8"} {
		t.Run(codec, func(t *testing.T) {
			room := "e2ee-" + strings.ToLower(codec)
			// The display hook (the unit's screen) gets the patient's frames
			// decrypted: VP8 key frames of the page's 640x360, and none
			// still ending in the encrypted frame's trailer (IV length 12,
			// key index 0).
			var shown, shownKeys, stillSealed atomic.Int64
			call, g, _ := joinE2EE(t, lk, room, codec, key, logs, func(f playout.VideoFrame) {
				shown.Add(1)
				if bytes.HasSuffix(f.Data, []byte{12, 0}) {
					stillSealed.Add(1)
				}
				if f.Codec == "VP8" && f.Keyframe && f.Width == 640 && f.Height == 360 && len(f.Data) > 100 {
					shownKeys.Add(1)
				}
			})
			patient := farend.StartFarEnd(t, lk, room, "patient", farend.Publish(), farend.Watch("unit-1"), farend.E2EE(material), farend.ReadStamps())
			s := farWaitT(t, patient, "the patient with the key decodes the unit's video at 20 fps, reads its capture stamps and hears it", 30*time.Second, func(s farend.FarEndStats) bool {
				return s.E2EE && s.VideoFrom == "unit-1" && s.FPS >= 20 && s.StampFramesValid > 10 && s.AudioEnergyPeak > 0.01
			})
			t.Logf("patient with the key: %.0f fps, %d frames decoded, audio peak %.3f, worker errors %d", s.FPS, s.VideoFramesDecoded, s.AudioEnergyPeak, s.E2EEErrors)
			// And it keeps that rate: over 5 s, not at one moment. Encrypted
			// H.264 key frames whose PPS id read from ciphertext were dropped
			// by Chromium's SPS/PPS tracker, and the picture stalled to the
			// next one (14-26 fps on average; media/e2ee slice.go).
			// H.264 is held to 25 (openh264 gives 28-30 even under -race, and
			// the stalls gave 14-26), VP8 to the 20 (libvpx under
			// -race gave 22 in CI's dry run, clear or not).
			want := 20.0
			if codec == "H264" {
				want = 25
			}
			n0, t0 := s.VideoFramesDecoded, time.Now()
			time.Sleep(5 * time.Second)
			s1 := patient.Stats()
			if rate := float64(s1.VideoFramesDecoded-n0) / time.Since(t0).Seconds(); rate < want {
				t.Errorf("the patient with the key decoded %.1f frames a second over 5 s, want >= %.0f. %s", rate, want, s1)
			} else {
				t.Logf("patient with the key: %.1f frames a second decoded over 5 s", rate)
			}
			if s.E2EEErrors != 0 {
				t.Errorf("the patient's worker reported %d errors with the right key", s.E2EEErrors)
			}
			ps := waitPlayout(t, call, "the unit shows and plays the patient (decrypted)", 20*time.Second, func(s playout.Stats) bool {
				for _, v := range s.Video {
					if v.FPS >= 15 && v.Frames > 30 {
						return s.EnergyPeak > 0.01
					}
				}
				return false
			})
			if !ps.E2EE || ps.E2EEDecrypted == 0 {
				t.Errorf("playout: e2ee %v, %d frames decrypted", ps.E2EE, ps.E2EEDecrypted)
			}
			failsBefore := ps.E2EEDecryptFailures
			if shown.Load() < 30 || shownKeys.Load() == 0 || stillSealed.Load() > 1 {
				t.Errorf("display hook: %d frames, %d VP8 key frames of 640x360, %d still encrypted", shown.Load(), shownKeys.Load(), stillSealed.Load())
			}

			// Without the key: not a single frame of the unit's video.
			nokeyAt := time.Now()
			nokey := farend.StartFarEnd(t, lk, room, "eavesdropper", farend.Watch("unit-1"), farend.ReadStamps())
			// Another key: nothing, and the worker says so.
			wrong := farend.StartFarEnd(t, lk, room, "wrong-key", farend.Publish(), farend.Watch("unit-1"), farend.E2EE(e2eeMaterial(9)))
			farWaitT(t, wrong, "the wrong-key page reports decryption errors", 30*time.Second, func(s farend.FarEndStats) bool {
				return s.E2EEErrors > 0 && s.VideoPacketsReceived > 100
			})
			farWaitT(t, nokey, "the keyless page receives the unit's video packets", 20*time.Second, func(s farend.FarEndStats) bool {
				return s.VideoPacketsReceived > 100
			})
			time.Sleep(2 * time.Second)
			// Another key: the worker drops every frame, none is decoded.
			if s := wrong.Stats(); s.VideoFramesDecoded != 0 || s.FramesPresented != 0 {
				t.Errorf("the wrong-key page decoded %d (presented %d) frames; want none. %s", s.VideoFramesDecoded, s.FramesPresented, s)
			}
			// No key: the clear codec header (VP8's 10 key-frame bytes, the
			// H.264 SPS/PPS and slice start) lets Chromium's decoder turn
			// the odd encrypted key frame into noise or a flat colour, but
			// not one frame of the unit's picture: no capture stamp of now
			// reads back, and the decoder does not keep going: about the
			// key frames (one every 2 s, and one for each picture loss the
			// pages report, which the keyless and wrong-key pages do
			// often), at most one a second in all, against the unit's 30
			// (0-6 in 6-8 s in runs here).
			//
			// A stamp is 30 bits of the capture time and a CRC-8, read from
			// 16x16 blocks, H.264's macroblock size at 640 wide: a noise
			// picture of flat macroblocks passes the CRC about once in 256
			// fully decided reads (CI once, at b1c9b8b: 1 valid stamp from
			// 3 green noise frames). Such a stamp names a random time in a
			// 12-day cycle; the unit's own picture names now, within the
			// call's glass-to-glass delay. So a stamp counts as the unit's
			// picture when it is within 10 s of now (a noise one is, about
			// once in 50,000).
			ks := nokey.Stats()
			var now []time.Duration
			ages := nokey.StampLatencies()
			for _, a := range ages {
				if a > -10*time.Second && a < 10*time.Second {
					now = append(now, a)
				}
			}
			maxNoise := 2 + int(time.Since(nokeyAt).Seconds())
			if len(now) != 0 || ks.VideoFramesDecoded > maxNoise || ks.FPS > 2 {
				t.Errorf("the keyless page got the unit's picture: %d stamps of now (ages %v; all valid ones %v), %d frames decoded (at most %d), %.0f fps. %s", len(now), now, ages, ks.VideoFramesDecoded, maxNoise, ks.FPS, ks)
			} else {
				t.Logf("keyless page: %d packets, %d frames decoded (noise; at most %d), %d stamps passed the CRC, none of now (ages %v)", ks.VideoPacketsReceived, ks.VideoFramesDecoded, maxNoise, ks.StampFramesValid, ages)
			}
			waitPlayout(t, call, "the unit counts the wrong-key participant's frames as decrypt failures", 20*time.Second, func(s playout.Stats) bool {
				return s.E2EEDecryptFailures > failsBefore+10
			})

			if codec == "H264" {
				// PRIVACY at an encrypted far end: the last picture is the slate.
				g.Set(gate.State{Video: false, Audio: false})
				farWaitT(t, patient, "the encrypted far end's last picture is the slate", 10*time.Second, func(s farend.FarEndStats) bool { return s.LastFrameIsUniform })
				g.Set(gate.State{Video: true, Audio: true})
				farWaitT(t, patient, "the picture again after PRIVACY off", 10*time.Second, func(s farend.FarEndStats) bool { return !s.LastFrameIsUniform && s.FPS >= 15 })

				// LEAVE: the far end sees the unit go.
				if err := call.Leave(context.Background()); err != nil {
					t.Fatalf("leave: %v", err)
				}
				farWaitT(t, patient, "the unit has left", 10*time.Second, func(s farend.FarEndStats) bool { return slices.Contains(s.ParticipantsLeft, "unit-1") })
			}
			for _, fe := range []*farend.FarEnd{patient, nokey, wrong} {
				errs = append(errs, fe.Stats().Errors...)
			}
		})
	}
	out := logs.String() + strings.Join(errs, "\n")
	if len(out) < 100 {
		t.Fatalf("only %d bytes of logs to scan", len(out))
	}
	for _, f := range keyForms(material) {
		if strings.Contains(out, f) {
			t.Fatalf("a form of the key (%d chars) is in the logs", len(f))
		}
	}
	if s := fmt.Sprintf("%v %+v %s", key, key, key); strings.Contains(s, hex.EncodeToString(material)[:8]) || !strings.Contains(s, "redacted") {
		t.Fatalf("the key prints as %q", s)
	}
}

// The WHIP connector cannot announce encrypted tracks: asked for E2EE it
// refuses to join, with the reason, and sends nothing in the clear.
func TestE2EEWHIPRefused(t *testing.T) {
	key, _ := e2ee.NewKey(e2eeMaterial(1))
	c, err := livekit.NewWHIP(livekit.Config{URL: "http://127.0.0.1:1", Room: "r", Identity: "unit-1", APIKey: "k", APISecret: "s"},
		livekit.Media{Width: 640, Height: 480, FPS: 30, VideoCodec: "auto", Camera: capture.TestDevice, Microphone: capture.TestDevice, E2EE: key}, gate.New(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Join(context.Background())
	if !errors.Is(err, livekit.ErrE2EENeedsRTC) || !strings.Contains(err.Error(), "not sent in the clear") {
		t.Fatalf("WHIP join with E2EE: %v", err)
	}
}
