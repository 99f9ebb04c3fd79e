package playout

import (
	"bytes"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtp"
)

// chanSource is a remote track fed by the test: closing it ends the track.
type chanSource chan *rtp.Packet

func (c chanSource) ReadRTP() (*rtp.Packet, interceptor.Attributes, error) {
	p, ok := <-c
	if !ok {
		return nil, nil, io.EOF
	}
	return p, nil, nil
}

// rtpStream numbers packets as a sender would.
type rtpStream struct {
	seq uint16
	ts  uint32
}

func (s *rtpStream) next(payload []byte, marker bool, newFrame bool) *rtp.Packet {
	if newFrame {
		s.ts += 3000
	}
	s.seq++
	return &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 102, SequenceNumber: s.seq, Timestamp: s.ts, Marker: marker}, Payload: payload}
}

// fuA is one FU-A fragment of an IDR slice (NAL type 5).
func fuA(start, end bool, body []byte) []byte {
	h := byte(5)
	if start {
		h |= fuStartBit
	}
	if end {
		h |= fuEndBit
	}
	return append([]byte{0x7c, h}, body...)
}

// h264Keyframe sends one real-looking IDR in three FU-A fragments.
func h264Keyframe(s *rtpStream, src chanSource, n int) {
	body := bytes.Repeat([]byte{0xab}, n)
	src <- s.next(fuA(true, false, body), false, true)
	src <- s.next(fuA(false, false, body), false, false)
	src <- s.next(fuA(false, true, body), true, false)
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func waitStats(t *testing.T, p *Player, what string, cond func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := p.Stats()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5 s; last %+v", what, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A far-end participant sends 50 MB of H.264 FU-A fragments that start a
// NAL and never end it, each with a new timestamp (as a hostile publisher
// does through the SFU once it has sent one real keyframe). The unit's heap
// stays bounded by the frame cap, and the next real keyframe is shown as
// itself, not glued to 50 MB of garbage.
func TestH264StartWithoutEndStaysBounded(t *testing.T) {
	p, err := Open(Config{Device: DeviceClock})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var sizes []int
	frames := make(chan int, 16)
	p.cfg.OnVideoFrame = func(f VideoFrame) {
		if f.Keyframe {
			frames <- len(f.Data)
		}
	}
	src := make(chanSource)
	done := make(chan error, 1)
	go func() { done <- p.ShowVideo("p-1", "video/H264", src, nil) }()

	var s rtpStream
	h264Keyframe(&s, src, 1000)
	src <- s.next([]byte{0x09, 0xf0}, true, true) // an AUD: lets the builder release the keyframe
	waitStats(t, p, "the first keyframe", func(st Stats) bool { return len(st.Video) == 1 && st.Video[0].Frames == 1 })
	sizes = append(sizes, <-frames)

	before := liveHeap()
	junk := bytes.Repeat([]byte{0xcd}, 1400)
	const sent = 50 << 20
	for n := 0; n < sent; n += len(junk) {
		src <- s.next(fuA(true, false, junk), false, true)
	}
	src <- s.next(fuA(true, false, junk), false, true) // the builder releases the last one on the next
	after := liveHeap()
	st := p.Stats().Video[0]
	t.Logf("sent %d MB of start-only FU-A fragments: live heap %d → %d KB; the unit says it buffers %d KB",
		sent>>20, before>>10, after>>10, st.Buffered>>10)
	if grow := int64(after) - int64(before); grow > 3*MaxFrameBytes {
		t.Fatalf("the live heap grew %d MB over 50 MB of unfinished fragments; want at most %d MB (the frame cap)", grow>>20, 3*MaxFrameBytes>>20)
	}
	if st.Buffered > 2*MaxFrameBytes {
		t.Fatalf("the unit buffers %d bytes for one video; cap %d", st.Buffered, 2*MaxFrameBytes)
	}

	h264Keyframe(&s, src, 1000)
	src <- s.next([]byte{0x09, 0xf0}, true, true)
	waitStats(t, p, "the real keyframe after the junk", func(st Stats) bool { return len(st.Video) == 1 && st.Video[0].Keyframes == 2 })
	for len(sizes) < 2 {
		sizes = append(sizes, <-frames)
	}
	if sizes[1] != sizes[0] {
		t.Fatalf("the keyframe after the junk is %d bytes, the same keyframe before it %d: the junk was glued on", sizes[1], sizes[0])
	}
	close(src)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A single NAL fragmented past the cap (start, then middles, never an end)
// is dropped once it reaches the cap, and a frame of legitimate size right
// after it is whole.
func TestBoundedH264(t *testing.T) {
	d := &boundedH264{limit: 10_000}
	mid := bytes.Repeat([]byte{1}, 1000)
	if _, err := d.Unmarshal(fuA(false, false, mid)); err == nil {
		t.Fatal("a middle fragment with no start before it was taken")
	}
	if d.held() != 0 {
		t.Fatalf("an orphan fragment is held: %d bytes", d.held())
	}
	if _, err := d.Unmarshal(fuA(true, false, mid)); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = d.Unmarshal(fuA(false, false, mid))
		if d.held() > d.limit {
			t.Fatalf("holds %d bytes; cap %d", d.held(), d.limit)
		}
	}
	if err != errFrameTooLarge {
		t.Fatalf("a NAL past the cap: err %v, want %v", err, errFrameTooLarge)
	}
	if _, err := d.Unmarshal(fuA(false, true, mid)); err == nil {
		t.Fatal("the end of a NAL dropped for its size was taken")
	}
	// A new start bit begins a new NAL: what an earlier one left is gone.
	_, _ = d.Unmarshal(fuA(true, false, mid))
	_, _ = d.Unmarshal(fuA(true, false, mid))
	out, err := d.Unmarshal(fuA(false, true, mid))
	if err != nil {
		t.Fatal(err)
	}
	if want := 4 + 1 + 2*len(mid); len(out) != want {
		t.Fatalf("NAL after a restarted one: %d bytes, want %d", len(out), want)
	}
	if d.held() != 0 {
		t.Fatalf("holds %d bytes after a whole NAL", d.held())
	}
}

// A video track that ends (unpublished, unsubscribed) is forgotten with
// its last frame: a long call of people coming and going does not keep
// every picture anyone ever sent.
func TestEndedVideoIsForgotten(t *testing.T) {
	p, err := Open(Config{Device: DeviceClock})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := 0; i < 3; i++ {
		src := make(chanSource)
		done := make(chan error, 1)
		go func() { done <- p.ShowVideo("p-1", "video/H264", src, nil) }()
		var s rtpStream
		h264Keyframe(&s, src, 100_000)
		src <- s.next([]byte{0x09, 0xf0}, true, true)
		waitStats(t, p, "the keyframe", func(st Stats) bool { return len(st.Video) == 1 && st.Video[0].Frames == 1 })
		if p.LatestFrame("p-1") == nil {
			t.Fatal("no latest frame while the video is there")
		}
		close(src)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if st := p.Stats(); len(st.Video) != 0 {
		t.Fatalf("3 ended videos, %d still listed: %+v", len(st.Video), st.Video)
	}
	p.mu.Lock()
	n := len(p.videos)
	p.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d ended videos still held", n)
	}
}
