package mediamtx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media/samplebuilder"
	"golang.org/x/image/vp8"
)

// UniformStdDev is the pixel standard deviation (luma, 0..255) at or below
// which a decoded picture counts as the slate (a flat picture), as
// internal/farend judges the far end's picture.
const UniformStdDev = 6.0

// Frame is one VP8 frame the reader got; key frames are decoded.
type Frame struct {
	At       time.Time
	Key      bool
	Decoded  bool    // a key frame that decoded
	StdDev   float64 // of its luma, when Decoded
	Uniform  bool    // StdDev <= UniformStdDev, when Decoded
	Width    int
	Height   int
	Bytes    int
	decodeEr string
}

// Reader reads a path over WHEP with pion and decodes every VP8 key frame
// (golang.org/x/image/vp8 decodes key frames only; the unit's slate is
// all key frames).
type Reader struct {
	pc       *webrtc.PeerConnection
	location string
	mu       sync.Mutex
	frames   []Frame
	audio    int
	ended    bool
}

// Read starts a WHEP session at endpoint and returns once the answer is
// set; frames arrive as they come (Frames).
func Read(ctx context.Context, endpoint string) (*Reader, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000},
		PayloadType:        96,
	}, webrtc.RTPCodecTypeVideo); err != nil {
		return nil, err
	}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2},
		PayloadType:        111,
	}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	pc, err := webrtc.NewAPI(webrtc.WithMediaEngine(m)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	r := &Reader{pc: pc}
	for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			pc.Close()
			return nil, err
		}
	}
	pc.OnTrack(func(t *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		if t.Kind() == webrtc.RTPCodecTypeVideo {
			r.video(t)
			return
		}
		for {
			if _, _, err := t.ReadRTP(); err != nil {
				return
			}
			r.mu.Lock()
			r.audio++
			r.mu.Unlock()
		}
	})
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		pc.Close()
		return nil, err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		pc.Close()
		return nil, err
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		pc.Close()
		return nil, ctx.Err()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(pc.LocalDescription().SDP))
	if err != nil {
		pc.Close()
		return nil, err
	}
	req.Header.Set("Content-Type", "application/sdp")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("whep: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		pc.Close()
		return nil, fmt.Errorf("whep: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	if loc, err := resp.Request.URL.Parse(resp.Header.Get("Location")); err == nil {
		r.location = loc.String()
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: string(body)}); err != nil {
		pc.Close()
		return nil, fmt.Errorf("whep answer: %w", err)
	}
	return r, nil
}

func (r *Reader) video(t *webrtc.TrackRemote) {
	sb := samplebuilder.New(64, &codecs.VP8Packet{}, 90000)
	for {
		p, _, err := t.ReadRTP()
		if err != nil {
			r.mu.Lock()
			r.ended = true
			r.mu.Unlock()
			return
		}
		sb.Push(p)
		for s := sb.Pop(); s != nil; s = sb.Pop() {
			r.frame(s.Data)
		}
	}
}

func (r *Reader) frame(b []byte) {
	f := Frame{At: time.Now(), Bytes: len(b), Key: len(b) > 0 && b[0]&1 == 0}
	if f.Key {
		d := vp8.NewDecoder()
		d.Init(bytes.NewReader(b), len(b))
		if fh, err := d.DecodeFrameHeader(); err == nil {
			f.Width, f.Height = fh.Width, fh.Height
			if img, err := d.DecodeFrame(); err == nil {
				f.Decoded = true
				f.StdDev = lumaStdDev(img.Y, img.YStride, fh.Width, fh.Height)
				f.Uniform = f.StdDev <= UniformStdDev
			} else {
				f.decodeEr = err.Error()
			}
		} else {
			f.decodeEr = err.Error()
		}
	}
	r.mu.Lock()
	r.frames = append(r.frames, f)
	r.mu.Unlock()
}

func lumaStdDev(y []byte, stride, w, h int) float64 {
	var sum, sq float64
	n := 0
	for row := 0; row < h; row += 2 {
		for col := 0; col < w; col += 2 {
			v := float64(y[row*stride+col])
			sum += v
			sq += v * v
			n++
		}
	}
	if n == 0 {
		return 0
	}
	mean := sum / float64(n)
	return math.Sqrt(math.Max(0, sq/float64(n)-mean*mean))
}

// Frames are the frames so far, in order.
func (r *Reader) Frames() []Frame {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Frame(nil), r.frames...)
}

// AudioPackets counts the audio RTP packets so far.
func (r *Reader) AudioPackets() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.audio
}

// WaitFor polls the frames until cond holds or ctx ends.
func (r *Reader) WaitFor(ctx context.Context, cond func([]Frame) bool) ([]Frame, error) {
	for {
		fs := r.Frames()
		if cond(fs) {
			return fs, nil
		}
		select {
		case <-ctx.Done():
			return fs, fmt.Errorf("whep reader: %w (%d frames)", ctx.Err(), len(fs))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close ends the session (DELETE) and the peer connection.
func (r *Reader) Close() error {
	var err error
	if r.location != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if req, e := http.NewRequestWithContext(ctx, http.MethodDelete, r.location, nil); e == nil {
			if resp, e := http.DefaultClient.Do(req); e == nil {
				resp.Body.Close()
			} else {
				err = e
			}
		}
	}
	return errors.Join(err, r.pc.Close())
}
