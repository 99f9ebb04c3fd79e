package livekit

import (
	"bytes"
	"errors"
	"strings"
	"sync"

	"github.com/konsult/konsult/media/e2ee"
)

// ErrE2EENeedsRTC refuses an end-to-end encrypted call on the WHIP
// connector: LiveKit's WHIP ingress cannot announce a track as encrypted,
// so a browser would not decrypt it, and the call must never go out in the
// clear instead.
var ErrE2EENeedsRTC = errors.New("end-to-end encryption needs connector livekit (/rtc/v1): the WHIP connector cannot announce encrypted tracks, and the call is not sent in the clear instead")

// e2eeSend encrypts every encoded frame the unit sends (camera, privacy
// slate, microphone) in livekit-client's frame format. An H.264 access unit
// with parameter sets but no slice is held and sent in front of the next
// slice: an encrypted frame needs a slice to put its clear header on, and
// the SPS/PPS must stay in band with the IDR.
func e2eeSend(k *e2ee.Key, videoCodec string, next FrameTransform) FrameTransform {
	vc := strings.ToLower(videoCodec)
	var mu sync.Mutex
	var held []byte
	return func(kind string, frame []byte) ([]byte, error) {
		if next != nil {
			var err error
			if frame, err = next(kind, frame); err != nil {
				return nil, err
			}
		}
		if kind == "audio" {
			return k.Encrypt("opus", frame)
		}
		if vc == "h264" {
			mu.Lock()
			if len(held) > 0 {
				frame = append(held, frame...)
				held = nil
			}
			out, err := k.Encrypt(vc, frame)
			if errors.Is(err, e2ee.ErrNoSlice) && len(frame) < 4096 && bytes.HasPrefix(frame, []byte{0, 0}) {
				held = append([]byte(nil), frame...)
			}
			mu.Unlock()
			return out, err
		}
		return k.Encrypt(vc, frame)
	}
}
