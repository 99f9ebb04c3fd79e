//go:build cgo

package capture

import (
	"bytes"
	"image"
	"io"
	"testing"
	"time"

	"github.com/pion/mediadevices/pkg/codec/vpx"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"

	"github.com/konsult/konsult/media/encoder"
)

// oneFramePerRead hands the VP8 decoder one encoded frame per Read, as it
// expects.
type oneFramePerRead struct{ frames <-chan []byte }

func (r oneFramePerRead) Read(p []byte) (int, error) {
	f, ok := <-r.frames
	if !ok {
		return 0, io.EOF
	}
	return copy(p, f), nil
}

// The stamp through roomd's own VP8 encoder (as the registry builds it for a
// call) and libvpx's decoder: nearly every frame reads back, and none reads
// back wrong. (H.264 is checked at the real far end, see cmd/roomd.)
func TestStampSurvivesVP8(t *testing.T) {
	ch, err := encoder.Choose(encoder.Video, "VP8", encoder.Settings{})
	if err != nil {
		t.Skipf("no VP8 encoder in this build: %v", err)
	}
	const w, h, fps, n = 640, 480, 30, 45
	builder, err := ch.Chosen.Video(encoder.Settings{BitRate: 1_200_000, KeyFrameInterval: 2 * fps})
	if err != nil {
		t.Fatal(err)
	}
	var stamped []uint32
	i := 0
	cam := video.ReaderFunc(func() (image.Image, func(), error) {
		// Camera pace: the encoder's rate control budgets by frame time.
		time.Sleep(time.Second / fps)
		img := picture(w, h, image.YCbCrSubsampleRatio420)
		// Move the picture under the stamp, as a camera would.
		copy(img.Y, bytes.Repeat([]byte{byte(i * 8)}, w*h/4))
		i++
		ms := StampMs(time.Now())
		stamped = append(stamped, ms)
		WriteStamp(img, ms)
		return img, func() {}, nil
	})
	media := prop.Media{Video: prop.Video{Width: w, Height: h, FrameRate: fps}}
	enc, err := builder.BuildVideoEncoder(cam, media)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	frames := make(chan []byte, n)
	for range n {
		b, release, err := enc.Read()
		if err != nil {
			t.Fatal(err)
		}
		frames <- append([]byte(nil), b...)
		release()
	}
	close(frames)
	dec, err := vpx.NewDecoder(oneFramePerRead{frames}, media)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	valid := 0
	for k := 0; ; k++ {
		img, _, err := dec.Read()
		if err == io.EOF {
			if k != n {
				t.Fatalf("decoded %d frames of %d", k, n)
			}
			break
		}
		if err != nil {
			t.Fatalf("frame %d: %v", k, err)
		}
		ms, ok := ReadStamp(img)
		if !ok {
			continue
		}
		if ms != stamped[k] {
			t.Fatalf("frame %d read back as %d, stamped %d: a misread got through", k, ms, stamped[k])
		}
		valid++
	}
	if valid < n*9/10 {
		t.Fatalf("only %d of %d VP8 frames gave their stamp back", valid, n)
	}
	t.Logf("%d of %d VP8 frames gave their stamp back", valid, n)
}
