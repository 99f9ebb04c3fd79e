//go:build linux && (amd64 || arm64)

package capture

import (
	"errors"
	"fmt"
	"image"
	"io"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/mediadevices"
	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"

	"github.com/konsult/konsult/media/encoder/v4l2m2m"
	"github.com/konsult/konsult/media/gate"
)

// PassThrough is the video "encoder" for a camera that encodes H.264
// itself (a UVC camera offering H264): its access units go to the
// WebRTC track as they come, with no re-encode. It is a
// codec.VideoEncoderBuilder so the conference code treats it like any
// other encoder, and Open, seeing it, opens the camera through it instead
// of through mediadevices.
//
// The privacy gate works on coded units here, since there is no encoder to
// withhold raw frames from:
//   - While the gate is shut the camera is not read; the far end gets the
//     privacy slate, pre-coded as H.264 (an IDR, then P frames) at the
//     camera's size, SlatesPerClose units one frame interval apart, then
//     the slate's IDR again every SlateInterval until the gate opens.
//   - When it opens, whatever the camera finished meanwhile is dropped
//     unread (Camera.Flush), a keyframe is asked for where the driver can
//     be asked, and camera units are dropped until the first IDR: the far
//     end's decoder never gets a P-frame that refers to the slate. An IDR
//     that comes without SPS/PPS gets the camera's last ones in front.
//   - A keyframe request from the far end (PLI/FIR) forces a keyframe when
//     the driver has the control; otherwise the far end waits for the
//     camera's own next IDR.
//   - The bitrate follows congestion control only if the driver has
//     V4L2_CID_MPEG_VIDEO_BITRATE.
type PassThrough struct {
	Camera        v4l2m2m.CameraInfo
	Width, Height int
	FPS           int
	BitRate       int // bits/s, if the camera takes it
	Log           *slog.Logger
	// Slate is the privacy slate as H.264 access units (IDR first); nil
	// codes it (SlateH264) when the call starts.
	Slate [][]byte

	mu  sync.Mutex
	c   *Capture // the call it serves: set by Open
	cam *v4l2m2m.Camera
	r   *passThroughReader
}

// ErrPassThroughUnbound: a PassThrough was used by something other than
// capture.Open, which alone knows the gate.
var ErrPassThroughUnbound = errors.New("camera pass-through must be opened by capture.Open")

// RTPCodec implements codec.VideoEncoderBuilder.
func (p *PassThrough) RTPCodec() *codec.RTPCodec { return codec.NewRTPH264Codec(90000) }

// BuildVideoEncoder implements codec.VideoEncoderBuilder: it opens the
// camera and returns the gated reader of its access units. The raw reader
// it is given carries no camera frames and is never read.
func (p *PassThrough) BuildVideoEncoder(_ video.Reader, _ prop.Media) (codec.ReadCloser, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c == nil {
		return nil, ErrPassThroughUnbound
	}
	if p.r != nil {
		return nil, errors.New("camera pass-through: the camera is already streaming to a peer connection")
	}
	if p.Log == nil {
		p.Log = slog.Default()
	}
	slate := p.Slate
	if slate == nil {
		var err error
		if slate, err = SlateH264(p.Width, p.Height, p.FPS); err != nil {
			return nil, fmt.Errorf("camera pass-through: privacy slate: %w", err)
		}
	}
	cam, err := v4l2m2m.OpenCamera(v4l2m2m.CameraParams{Info: p.Camera, Width: p.Width, Height: p.Height, FPS: p.FPS, BitRate: p.BitRate, Log: p.Log})
	if err != nil {
		return nil, fmt.Errorf("camera pass-through: %w", err)
	}
	openPassThroughs.Add(1)
	interval := time.Second / 30
	if p.FPS > 0 {
		interval = time.Second / time.Duration(p.FPS)
	}
	p.cam = cam
	p.r = &passThroughReader{p: p, c: p.c, cam: cam, slate: slate, interval: interval, waitIDR: true, log: p.Log.With("camera", p.Camera.Path)}
	return p.r, nil
}

// closeCamera releases the camera; safe to call more than once.
func (p *PassThrough) closeCamera() {
	p.mu.Lock()
	cam := p.cam
	p.cam = nil
	p.mu.Unlock()
	if cam == nil {
		return
	}
	if err := cam.Close(); err != nil {
		p.Log.Warn("camera pass-through: close", "err", err)
	}
	openPassThroughs.Add(-1)
}

// Stats are what the pass-through did in this call (nil before it started).
func (p *PassThrough) Stats() *PassThroughStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.r == nil {
		return nil
	}
	return &p.r.stats
}

// PassThroughStats count what the gate did with the camera's units.
type PassThroughStats struct {
	WaitedForIDR atomic.Int64 // camera units dropped after an open, before its IDR
	KeyRequests  atomic.Int64 // keyframes asked of the camera (gate opened, PLI/FIR)
	Flushed      atomic.Int64 // units the camera finished while the gate was shut, dropped unread
}

// openPassThroughs counts pass-through cameras open now (DevicesOpen).
var openPassThroughs atomic.Int32

func passThroughsOpen() []string {
	if n := openPassThroughs.Load(); n > 0 {
		return []string{fmt.Sprintf("%d H.264 pass-through camera(s)", n)}
	}
	return nil
}

// passThroughOf finds a PassThrough in b, also inside a wrapper that embeds
// the builder (a frame transform, such as the conference's end-to-end
// encryption): the wrapper then still gets to change every unit, since the
// track builds through it.
func passThroughOf(b codec.VideoEncoderBuilder) *PassThrough {
	for depth := 0; b != nil && depth < 4; depth++ {
		if p, ok := b.(*PassThrough); ok {
			return p
		}
		if u, ok := b.(interface {
			Unwrap() codec.VideoEncoderBuilder
		}); ok {
			b = u.Unwrap()
			continue
		}
		v := reflect.ValueOf(b)
		if v.Kind() == reflect.Pointer {
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			return nil
		}
		var next codec.VideoEncoderBuilder
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if f.Anonymous && f.IsExported() && f.Type == reflect.TypeFor[codec.VideoEncoderBuilder]() {
				next, _ = v.Field(i).Interface().(codec.VideoEncoderBuilder)
			}
		}
		b = next
	}
	return nil
}

// openPassThrough adds the pass-through video track to c: a mediadevices
// track whose only "encoder" is the camera (through whatever wraps p).
func openPassThrough(c *Capture, p *PassThrough, cfg Config) mediadevices.Track {
	p.mu.Lock()
	p.c = c
	p.mu.Unlock()
	return mediadevices.NewVideoTrack(&noRawFrames{p: p, img: Slate(cfg.Width, cfg.Height)}, c.selector)
}

// noRawFrames is the pass-through track's raw source. mediadevices reads
// one frame to learn the size before it builds the encoder; nothing else
// reads it. Closing the track closes the camera.
type noRawFrames struct {
	p   *PassThrough
	img image.Image
}

func (s *noRawFrames) ID() string { return "camera-h264-passthrough" }
func (s *noRawFrames) Close() error {
	s.p.closeCamera()
	return nil
}
func (s *noRawFrames) Read() (image.Image, func(), error) { return s.img, func() {}, nil }

// passThroughReader is the gated reader of the camera's access units.
type passThroughReader struct {
	p        *PassThrough
	c        *Capture
	cam      *v4l2m2m.Camera
	log      *slog.Logger
	slate    [][]byte
	interval time.Duration

	// Read's own state (mediadevices reads from one goroutine).
	slateNext int  // next slate unit of this close; len(slate) when all sent
	open      bool // the gate was open at the last look
	waitIDR   bool

	start, end sync.Once
	noKeyOnce  sync.Once
	stats      PassThroughStats
}

// Read implements codec.ReadCloser: the next access unit to send.
func (r *passThroughReader) Read() (au []byte, release func(), err error) {
	r.start.Do(func() { r.c.reading.Add(1) })
	defer func() {
		if err != nil {
			release = func() {}
			r.end.Do(func() { r.c.readerEnded(err) })
		}
	}()
	g, n := r.c.g, r.c.Counters
	for {
		if e := r.c.fail[gate.Video].Load(); e != nil {
			return nil, nil, fmt.Errorf("camera lost: %w", *e)
		}
		changed := g.Changed()
		if !g.State().Video {
			r.open, r.waitIDR = false, true
			if r.slateNext < len(r.slate) {
				if r.slateNext > 0 && !r.sleep(r.interval) {
					return nil, nil, io.EOF
				}
				au = r.slate[r.slateNext]
				r.slateNext++
				n.Slates.Add(1)
				n.LastIsSlate.Store(true)
				return au, func() {}, nil
			}
			// Then the slate's IDR (with its SPS and PPS) again and again,
			// for a far end that lost the first units, asks for a keyframe
			// or subscribes while the unit is private: it decodes on its own.
			t := time.NewTimer(SlateInterval)
			select {
			case <-t.C:
				n.Slates.Add(1)
				n.LastIsSlate.Store(true)
				return r.slate[0], func() {}, nil
			case <-changed:
				t.Stop()
				continue
			case <-r.c.done:
				t.Stop()
				return nil, nil, io.EOF
			}
		}
		if !r.open {
			r.opened()
		}
		select {
		case <-r.c.done:
			return nil, nil, io.EOF
		default:
		}
		u, ok, err := r.cam.ReadUnit(50 * time.Millisecond)
		if errors.Is(err, v4l2m2m.ErrClosed) {
			return nil, nil, io.EOF // the track was closed under us: the call is over
		}
		if err != nil {
			return nil, nil, fmt.Errorf("camera lost: %w", err)
		}
		if !ok {
			continue
		}
		rel, ok := g.Enter(gate.Video)
		if !ok { // shut while we read: this unit goes nowhere
			continue
		}
		rel()
		if r.waitIDR {
			if !u.KeyFrame {
				r.stats.WaitedForIDR.Add(1)
				continue
			}
			r.waitIDR = false
			r.log.Debug("camera pass-through: sending from the camera's IDR", "dropped_before", r.stats.WaitedForIDR.Load())
		}
		if u.KeyFrame {
			u.Data = r.withParameterSets(u.Data)
		}
		r.slateNext = 0
		n.VideoFrames.Add(1)
		n.LastIsSlate.Store(false)
		return u.Data, func() {}, nil
	}
}

// opened runs when the gate is seen open after being shut: what the camera
// finished meanwhile is dropped unread, and an IDR is asked for.
func (r *passThroughReader) opened() {
	r.open = true
	if k, err := r.cam.Flush(); err != nil {
		r.log.Warn("camera pass-through: dropping stale frames", "err", err)
	} else {
		r.stats.Flushed.Add(int64(k))
	}
	r.askKeyFrame("gate opened")
}

func (r *passThroughReader) askKeyFrame(why string) {
	if !r.cam.CanForceKeyFrame() {
		r.noKeyOnce.Do(func() {
			r.log.Info("camera pass-through: the camera's driver cannot be asked for a keyframe; waiting for its own next IDR", "when", why)
		})
		return
	}
	r.stats.KeyRequests.Add(1)
	if err := r.cam.ForceKeyFrame(); err != nil {
		r.log.Info("camera pass-through: keyframe request refused", "when", why, "err", err)
	}
}

func (r *passThroughReader) sleep(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-r.c.done:
		return false
	}
}

// withParameterSets puts the camera's SPS and PPS before an IDR that came
// without them (some cameras send them only when streaming starts): the far
// end's decoder last saw the slate's.
func (r *passThroughReader) withParameterSets(au []byte) []byte {
	var sps, pps bool
	for _, nal := range v4l2m2m.NALUnits(au) {
		switch v4l2m2m.NALType(nal) {
		case v4l2m2m.NALSPS:
			sps = true
		case v4l2m2m.NALPPS:
			pps = true
		}
	}
	if sps && pps {
		return au
	}
	lastSPS, lastPPS := r.cam.ParameterSets()
	if len(lastSPS) == 0 || len(lastPPS) == 0 {
		return au
	}
	startCode := []byte{0, 0, 0, 1}
	out := make([]byte, 0, len(au)+len(lastSPS)+len(lastPPS)+8)
	out = append(append(append(out, startCode...), lastSPS...), startCode...)
	out = append(append(out, lastPPS...), au...)
	return out
}

// Close implements codec.ReadCloser.
func (r *passThroughReader) Close() error {
	r.p.closeCamera()
	return nil
}

// Controller implements codec.Controllable.
func (r *passThroughReader) Controller() codec.EncoderController { return r }

// ForceKeyFrame implements codec.KeyFrameController (the far end's
// PLI/FIR). Without the control it does nothing: the camera's own GOP
// decides when the far end's picture recovers.
func (r *passThroughReader) ForceKeyFrame() error {
	r.askKeyFrame("far end asked (PLI/FIR)")
	return nil
}

// SetBitRate implements codec.BitRateController.
func (r *passThroughReader) SetBitRate(bps int) error {
	err := r.cam.SetBitRate(bps)
	if errors.Is(err, v4l2m2m.ErrNoControl) {
		return fmt.Errorf("%w: the camera encodes at its own bitrate: %w", ErrNoRateControl, err)
	}
	return err
}

var (
	_ codec.VideoEncoderBuilder = (*PassThrough)(nil)
	_ codec.ReadCloser          = (*passThroughReader)(nil)
	_ codec.KeyFrameController  = (*passThroughReader)(nil)
	_ codec.BitRateController   = (*passThroughReader)(nil)
)
