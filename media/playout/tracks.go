package playout

import (
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtp"
)

// RTPSource is a remote track (webrtc.TrackRemote).
type RTPSource interface {
	ReadRTP() (*rtp.Packet, interceptor.Attributes, error)
}

// PlayAudio decodes and mixes one remote Opus track until it ends. It
// blocks: run it in the track's own goroutine.
func (p *Player) PlayAudio(participant string, t RTPSource) error {
	dec, err := newOpusDecoder()
	if err != nil {
		return err
	}
	s := &source{participant: participant, dec: dec}
	p.mu.Lock()
	select {
	case <-p.stop:
		p.mu.Unlock()
		dec.close()
		return ErrClosed
	default:
	}
	p.sources[s] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		if _, ok := p.sources[s]; ok {
			delete(p.sources, s)
			dec.close()
		}
		p.mu.Unlock()
	}()
	pcm := make([]float32, SampleRate*120/1000) // Opus's longest frame
	for {
		pkt, _, err := t.ReadRTP()
		if err != nil {
			return endOf(err)
		}
		frame := pkt.Payload
		if frame, err = p.decrypt("opus", frame); err != nil {
			continue
		}
		if p.cfg.Transform != nil {
			if frame, err = p.cfg.Transform("audio", frame); err != nil {
				continue
			}
		}
		p.mu.Lock()
		_, live := p.sources[s]
		var n int
		if live {
			n, err = dec.decode(frame, pcm)
		}
		p.mu.Unlock()
		if !live {
			return ErrClosed
		}
		if err != nil {
			p.log.Debug("remote audio: undecodable packet dropped", "participant", participant, "err", err)
			continue
		}
		s.push(pcm[:n])
	}
}

func endOf(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// VideoStats describes one remote video as the display would show it.
type VideoStats struct {
	Participant  string    `json:"participant"`
	Codec        string    `json:"codec"`
	Frames       uint64    `json:"frames"`
	Keyframes    uint64    `json:"keyframes"`
	FPS          float64   `json:"fps"` // over the last second
	Width        int       `json:"width"`
	Height       int       `json:"height"`
	FirstFrameAt time.Time `json:"first_frame_at"`
	LastFrameAt  time.Time `json:"last_frame_at"`
	Ended        bool      `json:"ended"`
	// Buffered is what the unit holds for this video: its last frame and
	// an unfinished one (at most 2×MaxFrameBytes).
	Buffered int `json:"buffered_bytes"`
	// Dropped counts frames over MaxFrameBytes.
	Dropped uint64 `json:"dropped_oversize"`
	// Received counts the RTP payload bytes of this video.
	Received uint64 `json:"received_bytes"`
}

type videoTrack struct {
	mu     sync.Mutex
	st     VideoStats
	recent []time.Time
	last   []byte
	held   int // bytes of an unfinished frame
}

// ShowVideo depacketises one remote video track into whole frames until it
// ends, counts them and hands them to the display sink. Frames before the
// first keyframe are dropped: no decoder could show them; keyframe (may be
// nil) asks the sender for one, once a second until one arrives. It blocks.
// When the track ends it is forgotten, with its last frame: a long call
// with people coming and going holds only the videos still there.
func (p *Player) ShowVideo(participant, mime string, t RTPSource, keyframe func()) error {
	codec := codecOf(mime)
	ra, err := newReassembler(codec, MaxFrameBytes)
	if err != nil {
		return errors.New("remote video: codec " + mime + " is not supported on the unit")
	}
	v := &videoTrack{st: VideoStats{Participant: participant, Codec: codec}}
	p.mu.Lock()
	select {
	case <-p.stop:
		p.mu.Unlock()
		return ErrClosed
	default:
	}
	p.videos[v] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.videos, v)
		p.mu.Unlock()
		v.mu.Lock()
		v.st.Ended = true
		v.last, v.recent = nil, nil
		v.mu.Unlock()
	}()
	seenKey := false
	var asked time.Time
	for {
		if !seenKey && keyframe != nil && time.Since(asked) > time.Second {
			keyframe()
			asked = time.Now()
		}
		pkt, _, err := t.ReadRTP()
		if err != nil {
			return endOf(err)
		}
		select {
		case <-p.stop:
			return ErrClosed
		default:
		}
		ra.push(pkt, func(frame []byte) {
			var err error
			if frame, err = p.decrypt(strings.ToLower(codec), frame); err != nil {
				return
			}
			if p.cfg.Transform != nil {
				if frame, err = p.cfg.Transform("video", frame); err != nil {
					return
				}
			}
			key, w, h := isKeyframe(codec, frame)
			if !seenKey && !key {
				return
			}
			seenKey = true
			now := time.Now()
			v.mu.Lock()
			if v.st.Frames == 0 {
				v.st.FirstFrameAt = now
			}
			v.st.Frames++
			v.st.LastFrameAt = now
			if key {
				v.st.Keyframes++
				if w > 0 {
					v.st.Width, v.st.Height = w, h
				}
			}
			v.recent = append(v.recent, now)
			for len(v.recent) > 0 && now.Sub(v.recent[0]) > time.Second {
				v.recent = v.recent[1:]
			}
			v.last = frame
			w, h = v.st.Width, v.st.Height
			v.mu.Unlock()
			if p.cfg.OnVideoFrame != nil {
				p.cfg.OnVideoFrame(VideoFrame{Participant: participant, Codec: codec, Keyframe: key, Width: w, Height: h, Data: frame, At: now})
			}
		})
		v.mu.Lock()
		v.st.Received += uint64(len(pkt.Payload))
		v.held = ra.held()
		v.st.Dropped = ra.dropped
		v.mu.Unlock()
	}
}

// isKeyframe tells a keyframe by its header, and reads the picture size where
// the header carries it (VP8), without decoding.
func isKeyframe(codec string, f []byte) (bool, int, int) {
	switch codec {
	case "VP8":
		if len(f) < 10 || f[0]&1 != 0 {
			return false, 0, 0
		}
		if f[3] != 0x9d || f[4] != 0x01 || f[5] != 0x2a {
			return false, 0, 0
		}
		return true, int(binary.LittleEndian.Uint16(f[6:8]) & 0x3fff), int(binary.LittleEndian.Uint16(f[8:10]) & 0x3fff)
	case "H264":
		// Annex B: any IDR slice (5) or SPS (7) makes it a keyframe.
		for i := 0; i+3 < len(f); i++ {
			if f[i] == 0 && f[i+1] == 0 && f[i+2] == 1 {
				if t := f[i+3] & 0x1f; t == 5 || t == 7 {
					return true, 0, 0
				}
			}
		}
	case "VP9":
		return len(f) > 0 && f[0]&0x4 == 0, 0, 0
	}
	return false, 0, 0
}

// Stats is what the unit plays and shows right now.
type Stats struct {
	Device        string       `json:"device"`
	AudioSources  int          `json:"audio_sources"`
	Energy        float64      `json:"energy"`      // RMS 0..1 of the mix over the last ~100 ms
	EnergyPeak    float64      `json:"energy_peak"` // highest Energy this call
	SamplesPlayed uint64       `json:"samples_played"`
	Video         []VideoStats `json:"video"`
	// E2EE says whether remote frames are decrypted end to end;
	// E2EEDecryptFailures counts the frames dropped because they did not
	// decrypt (a far end with another key, or none).
	E2EE                bool   `json:"e2ee"`
	E2EEDecrypted       uint64 `json:"e2ee_decrypted"`
	E2EEDecryptFailures uint64 `json:"e2ee_decrypt_failures"`
}

// decrypt decrypts one remote frame when the call is end-to-end
// encrypted, counting what does not decrypt.
func (p *Player) decrypt(codec string, frame []byte) ([]byte, error) {
	if p.cfg.E2EE == nil {
		return frame, nil
	}
	out, err := p.cfg.E2EE.Decrypt(codec, frame)
	if err != nil {
		p.e2eeFailures.Add(1)
		return nil, err
	}
	p.e2eeOK.Add(1)
	return out, nil
}

// Stats reads the figures of the videos still there (an ended one is
// forgotten).
func (p *Player) Stats() Stats {
	st := Stats{Device: p.device, SamplesPlayed: p.played.Load(), E2EE: p.cfg.E2EE != nil, E2EEDecrypted: p.e2eeOK.Load(), E2EEDecryptFailures: p.e2eeFailures.Load()}
	st.Energy = f64(p.energy.Load())
	st.EnergyPeak = f64(p.peak.Load())
	p.mu.Lock()
	st.AudioSources = len(p.sources)
	vids := make([]*videoTrack, 0, len(p.videos))
	for v := range p.videos {
		vids = append(vids, v)
	}
	p.mu.Unlock()
	now := time.Now()
	for _, v := range vids {
		v.mu.Lock()
		s := v.st
		n := 0
		for _, t := range v.recent {
			if now.Sub(t) <= time.Second {
				n++
			}
		}
		s.FPS = float64(n)
		s.Buffered = len(v.last) + v.held
		v.mu.Unlock()
		st.Video = append(st.Video, s)
	}
	return st
}

// LatestFrame is the newest frame of participant's video (nil if none): what
// a display that has just been switched on starts from.
func (p *Player) LatestFrame(participant string) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	for v := range p.videos {
		v.mu.Lock()
		ok := v.st.Participant == participant && !v.st.Ended
		f := v.last
		v.mu.Unlock()
		if ok {
			return f
		}
	}
	return nil
}
