package farend

import (
	"bytes"
	"testing"

	"golang.org/x/image/vp8"
)

func TestSlateKeyFrameDecodes(t *testing.T) {
	frame := slateKeyFrame(320, 240)
	d := vp8.NewDecoder()
	d.Init(bytes.NewReader(frame), len(frame))
	fh, err := d.DecodeFrameHeader()
	if err != nil {
		t.Fatal(err)
	}
	if !fh.KeyFrame || fh.Width != 320 || fh.Height != 240 {
		t.Fatalf("header %+v", fh)
	}
	img, err := d.DecodeFrame()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]int{{0, 0}, {160, 120}, {319, 239}} {
		y := img.Y[p[1]*img.YStride+p[0]]
		cb, cr := img.COffset(p[0], p[1]), img.COffset(p[0], p[1])
		if y != 128 && y != 127 || img.Cb[cb] != 128 && img.Cb[cb] != 127 || img.Cr[cr] != 128 && img.Cr[cr] != 127 {
			t.Errorf("pixel %v = Y%d Cb%d Cr%d, want ~128", p, y, img.Cb[cb], img.Cr[cr])
		}
	}
	t.Logf("slate key frame 320x240: %d bytes", len(frame))
}
