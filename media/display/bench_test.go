package display

import (
	"runtime"
	"testing"
	"time"

	"github.com/konsult/konsult/media/gate"
	"github.com/konsult/konsult/media/playout"
)

// BenchmarkFeedPage is roomd's cost of handing one far-end frame to the
// screen page: queueing, RTP packetisation, SRTP and the loopback send
// (an 8 KB frame: VP8 at 2 Mbit/s and 30 fps). It is what feeding the
// screen adds per frame; a 3-party call (two far ends at 30 fps) is 60
// of these a second.
func BenchmarkFeedPage(b *testing.B) {
	d, err := New(Config{Gate: gate.New()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	d.SetFarEnd(&FarEnd{})
	connectPageB(b, d) // in-process: its SRTP decrypt and reads are counted too
	data := make([]byte, 8<<10)
	copy(data, vp8Key)
	d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Keyframe: true, Data: data, At: time.Now()})
	d.mu.Lock()
	srv := d.pages[0]
	d.mu.Unlock()
	delta := append([]byte(nil), data...)
	delta[0] |= 1
	b.SetBytes(int64(len(delta)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for len(srv.q) > QueueFrames/2 {
			runtime.Gosched()
		}
		d.FarFrame(playout.VideoFrame{Participant: "p-a", Codec: "VP8", Data: delta, At: time.Now()})
	}
	for len(srv.q) > 0 {
		runtime.Gosched()
	}
	b.StopTimer()
}
