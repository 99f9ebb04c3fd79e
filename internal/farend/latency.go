package farend

import "time"

// LowLatency makes the far end buffer as little video as it can, so that
// each call does not settle on a delay of its own: without it two calls of
// the same path differ by more than a small cost being measured (issue
// 22's glass-to-glass ≤ 2 ms). The page sets RTCRtpReceiver
// jitterBufferTarget = 0 (Chromium >= 114) and playoutDelayHint = 0 on the
// tracks it watches; that alone changes little (0 is already the floor, the
// buffer's own estimate still rules: ~13 ms target, ~22 ms held per frame
// either way), so Chromium also gets the zeroPlayoutDelay field trial,
// which takes the per-frame jitter-buffer delay to ~1 ms. Default: off,
// the browser's own choice, as a patient's browser has it.
// JitterBuffer.SetTarget reads the setting back.
func LowLatency() Option {
	return func(c *config) {
		c.lowLatency = true
		c.extraFlags = append(c.extraFlags, "--force-fieldtrials="+zeroPlayoutDelay)
	}
}

// zeroPlayoutDelay is libwebrtc's field trial that makes a video receiver
// act as if the sender had asked for a playout delay of min 0, max 0 (the
// RTP playout-delay extension, as cloud gaming uses): each frame is
// rendered as soon as it is decoded instead of at a smoothed render time.
const zeroPlayoutDelay = "WebRTC-ForcePlayoutDelay/min_ms:0,max_ms:0/"

// JitterBuffer is the measured video track's jitter-buffer and decode
// counters from Chromium's inbound-rtp stats, cumulative since the track
// began (the W3C names, in seconds). Take two and use Since for an
// interval's per-frame figures.
type JitterBuffer struct {
	Delay      float64 `json:"delay"`      // jitterBufferDelay
	Target     float64 `json:"target"`     // jitterBufferTargetDelay
	Minimum    float64 `json:"minimum"`    // jitterBufferMinimumDelay
	Emitted    float64 `json:"emitted"`    // jitterBufferEmittedCount (frames)
	Processing float64 `json:"processing"` // totalProcessingDelay (first packet → decoded)
	Decode     float64 `json:"decode"`     // totalDecodeTime
	Decoded    float64 `json:"decoded"`    // framesDecoded, for Decode
	Received   float64 `json:"received"`   // framesReceived (complete frames assembled)
	Dropped    float64 `json:"dropped"`    // framesDropped (received, never decoded)
	// SetTarget is the receiver's jitterBufferTarget read back in ms with
	// LowLatency (0 once it took effect); nil without the option or where
	// the browser has no such setting.
	SetTarget *float64 `json:"setTarget"`
}

// JitterBufferInterval is what the frames between two JitterBuffer
// snapshots spent, per frame on average.
type JitterBufferInterval struct {
	Frames     int
	Delay      time.Duration // in the jitter buffer, per emitted frame
	Target     time.Duration // the buffer's target delay, per emitted frame
	Minimum    time.Duration // its minimum delay, per emitted frame
	Processing time.Duration // first packet received → decoded, per decoded frame
	Decode     time.Duration // in the decoder, per decoded frame
}

// Since returns the per-frame figures of the frames after earlier.
func (j JitterBuffer) Since(earlier JitterBuffer) JitterBufferInterval {
	per := func(sum, n float64) time.Duration {
		if n <= 0 {
			return 0
		}
		return time.Duration(sum / n * float64(time.Second))
	}
	e, d := j.Emitted-earlier.Emitted, j.Decoded-earlier.Decoded
	return JitterBufferInterval{
		Frames:     int(e),
		Delay:      per(j.Delay-earlier.Delay, e),
		Target:     per(j.Target-earlier.Target, e),
		Minimum:    per(j.Minimum-earlier.Minimum, e),
		Processing: per(j.Processing-earlier.Processing, d),
		Decode:     per(j.Decode-earlier.Decode, d),
	}
}
