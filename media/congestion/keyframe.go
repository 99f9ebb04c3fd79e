package congestion

import (
	"sync"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
)

// KeyFrameInterval is the least time between two keyframes made on the
// far end's request. A receiver that keeps losing packets keeps asking
// (PLI/FIR), and every keyframe is many times a normal frame: answering
// each request would bury a congested uplink under keyframes.
const KeyFrameInterval = time.Second

// keyFrameThrottle drops keyframe requests that come sooner than
// KeyFrameInterval after the last one let through, per media stream.
type keyFrameThrottle struct {
	interceptor.NoOp
	mu   sync.Mutex
	last map[uint32]time.Time
}

type keyFrameThrottleFactory struct{}

func (keyFrameThrottleFactory) NewInterceptor(string) (interceptor.Interceptor, error) {
	return &keyFrameThrottle{last: map[uint32]time.Time{}}, nil
}

func (k *keyFrameThrottle) allow(ssrc uint32, now time.Time) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now.Sub(k.last[ssrc]) < KeyFrameInterval {
		return false
	}
	k.last[ssrc] = now
	return true
}

func (k *keyFrameThrottle) BindRTCPReader(r interceptor.RTCPReader) interceptor.RTCPReader {
	return interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		for {
			n, attr, err := r.Read(b, a)
			if err != nil {
				return n, attr, err
			}
			pkts, err := rtcp.Unmarshal(b[:n])
			if err != nil {
				return n, attr, nil // not ours to judge
			}
			keep := pkts[:0]
			now := time.Now()
			for _, p := range pkts {
				switch p := p.(type) {
				case *rtcp.PictureLossIndication:
					if !k.allow(p.MediaSSRC, now) {
						continue
					}
				case *rtcp.FullIntraRequest:
					if !k.allow(p.MediaSSRC, now) {
						continue
					}
				}
				keep = append(keep, p)
			}
			if len(keep) == len(pkts) {
				return n, attr, nil
			}
			if len(keep) == 0 {
				continue
			}
			out, err := rtcp.Marshal(keep)
			if err != nil || len(out) > len(b) {
				return n, attr, nil
			}
			// Fresh attributes: any cached parse of the original is stale.
			return copy(b, out), interceptor.Attributes{}, nil
		}
	})
}

// addKeyFrameThrottle registers the throttle last, so it sits right in
// front of the encoder's RTCP reader.
func addKeyFrameThrottle(ir *interceptor.Registry) { ir.Add(keyFrameThrottleFactory{}) }
