package capture

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"testing"
	"time"

	"github.com/pion/mediadevices/pkg/io/video"
	xdraw "golang.org/x/image/draw"

	"github.com/konsult/konsult/media/gate"
)

// picture is a busy camera-like frame: the stamp must win over whatever the
// camera shows under it.
func picture(w, h int, ratio image.YCbCrSubsampleRatio) *image.YCbCr {
	img := image.NewYCbCr(image.Rect(0, 0, w, h), ratio)
	for y := range h {
		for x := range w {
			img.Y[img.YOffset(x, y)] = uint8((x*7 + y*3) ^ (x * y))
			c := img.COffset(x, y)
			img.Cb[c], img.Cr[c] = uint8(x), uint8(255-y)
		}
	}
	return img
}

func TestStampReadsBack(t *testing.T) {
	values := []uint32{0, 1, stampMask, 0x2AAAAAAA, 0x15555555, StampMs(time.Now())}
	for _, ms := range values {
		for _, img := range []image.Image{
			picture(640, 480, image.YCbCrSubsampleRatio420),
			picture(640, 480, image.YCbCrSubsampleRatio422), // what the test camera gives
			picture(1280, 720, image.YCbCrSubsampleRatio420),
			image.NewRGBA(image.Rect(0, 0, 320, 240)),
		} {
			if !WriteStamp(img, ms) {
				t.Fatalf("%T %v: WriteStamp refused", img, img.Bounds())
			}
			got, ok := ReadStamp(img)
			if !ok || got != ms {
				t.Fatalf("%T %v: read %#x ok=%v, stamped %#x", img, img.Bounds(), got, ok, ms)
			}
		}
	}
}

// What the far end does to the picture: lossy compression and scaling.
func TestStampSurvivesCompressionAndScaling(t *testing.T) {
	ms := StampMs(time.Now())
	src := picture(640, 480, image.YCbCrSubsampleRatio420)
	WriteStamp(src, ms)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, src, &jpeg.Options{Quality: 15}); err != nil {
		t.Fatal(err)
	}
	lossy, err := jpeg.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []image.Point{{640, 480}, {480, 360}, {320, 240}, {1280, 960}} {
		dst := image.NewRGBA(image.Rectangle{Max: size})
		xdraw.BiLinear.Scale(dst, dst.Bounds(), lossy, lossy.Bounds(), xdraw.Src, nil)
		if got, ok := ReadStamp(dst); !ok || got != ms {
			t.Errorf("JPEG q15 scaled to %v: read %#x ok=%v, stamped %#x", size, got, ok, ms)
		}
	}
}

// A frame without a stamp, or with a damaged one, gives no reading at all:
// a wrong latency would be worse than a missing sample.
func TestStampMisreadIsDiscarded(t *testing.T) {
	if _, ok := ReadStamp(picture(640, 480, image.YCbCrSubsampleRatio420)); ok {
		t.Fatal("an unstamped camera picture read as a stamp")
	}
	if _, ok := ReadStamp(Slate(640, 480)); ok {
		t.Fatal("the slate read as a stamp")
	}
	ms := uint32(0x12345678) & stampMask
	for block := stampRefBlocks; block < StampBlocks; block++ {
		img := image.NewRGBA(image.Rect(0, 0, 640, 480))
		WriteStamp(img, ms)
		bw := 640 / StampBlocks
		was := img.RGBAAt(block*bw+bw/2, bw/2).R
		flipped := color.RGBA{R: 255 - was, G: 255 - was, B: 255 - was, A: 255}
		for y := range bw {
			for x := block * bw; x < (block+1)*bw; x++ {
				img.SetRGBA(x, y, flipped)
			}
		}
		if got, ok := ReadStamp(img); ok {
			t.Fatalf("block %d flipped: read %#x as valid (stamped %#x)", block, got, ms)
		}
	}
	// A grey (undecidable) block, as in a frame caught mid-transition.
	img := image.NewRGBA(image.Rect(0, 0, 640, 480))
	WriteStamp(img, ms)
	for y := range 16 {
		for x := 5 * 16; x < 6*16; x++ {
			img.SetRGBA(x, y, color.RGBA{R: 128, G: 128, B: 128, A: 255})
		}
	}
	if _, ok := ReadStamp(img); ok {
		t.Fatal("a grey block was decided")
	}
}

func TestStampAgeAcrossWrap(t *testing.T) {
	now := time.UnixMilli(5<<StampTimeBits + 10) // 10 ms after a wrap
	if got := StampAge(now, stampMask-39); got != 50*time.Millisecond {
		t.Fatalf("age across the wrap: %v, want 50ms", got)
	}
	if got := StampAge(now, 30); got != -20*time.Millisecond {
		t.Fatalf("a stamp from the future: %v, want -20ms", got)
	}
}

// The stamp is drawn on camera frames only: with the gate shut the encoder
// gets the plain slate, so the far end still sees a uniform picture.
func TestStampIsOnCameraFramesNotTheSlate(t *testing.T) {
	g := gate.New()
	done := make(chan struct{})
	defer close(done)
	cam := video.ReaderFunc(func() (image.Image, func(), error) {
		time.Sleep(time.Millisecond)
		return picture(640, 480, image.YCbCrSubsampleRatio422), func() {}, nil
	})
	r := video.Merge(stampVideo(true), GateVideo(g, 640, 480, 1000, done, &Counters{}, nil))(cam)
	img, _, err := r.Read() // the gate starts shut
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ReadStamp(img); ok {
		t.Fatal("the slate carries a stamp")
	}
	g.Set(gate.State{Video: true, Audio: true})
	before := StampMs(time.Now())
	if img, _, err = r.Read(); err != nil {
		t.Fatal(err)
	}
	ms, ok := ReadStamp(img)
	if !ok {
		t.Fatal("a camera frame through the open gate has no stamp")
	}
	if age := StampAge(time.Now(), ms); age < 0 || StampAge(time.Now(), before) < age {
		t.Fatalf("stamp %d is not the time the frame left the camera (read began at %d)", ms, before)
	}
	unstamped := video.Merge(stampVideo(false))(cam)
	if img, _, _ := unstamped.Read(); img != nil {
		if _, ok := ReadStamp(img); ok {
			t.Fatal("stamping off, yet the frame carries a stamp")
		}
	}
}
