package capture

import (
	"image"
	"image/color"
	"image/draw"
	"time"

	"github.com/pion/mediadevices/pkg/io/video"
)

// The capture-time stamp is a barcode across the top of the picture, so the
// far end can read the capture time back from the decoded picture and the
// whole path (gate, encoder, network, SFU, jitter buffer, decoder, renderer)
// is measured as the patient sees it. It is for the simulated unit's
// benchmarks only: a real unit never stamps (the key is under [sim]).
//
// Layout, left to right in StampBlocks equal blocks across the full width:
// one white and one black reference block (the reader thresholds between
// them, so brightness and contrast changes do not matter), StampTimeBits
// bits of the capture time in ms (most significant first, white = 1), then a
// CRC-8 of those bits so a misread frame is discarded rather than reported
// as a wrong latency. Blocks are as tall as they are wide (at least
// StampMinHeight rows, rounded up to whole 16-row macroblocks), which makes
// them 16x16 at 640 px: each block is one H.264/VP8 macroblock, so the
// encoders' transforms and loop filters only ever blur block edges, and the
// reader samples block centres.
const (
	StampBlocks    = 40
	StampTimeBits  = 30
	StampMinHeight = 16

	stampRefBlocks = 2
	stampCRCBits   = 8
	stampWhite     = 235 // video-range white and black: no clipping on the way
	stampBlack     = 16
	stampMask      = 1<<StampTimeBits - 1
)

// StampMs is t in ms modulo 2^StampTimeBits (about 12 days), as stamped.
func StampMs(t time.Time) uint32 { return uint32(t.UnixMilli()) & stampMask }

// StampAge is how long before now a frame stamped with ms was captured,
// across the modulo wrap; negative if ms lies in now's future.
func StampAge(now time.Time, ms uint32) time.Duration {
	d := (StampMs(now) - ms) & stampMask
	if d >= 1<<(StampTimeBits-1) {
		return time.Duration(int64(d)-(1<<StampTimeBits)) * time.Millisecond
	}
	return time.Duration(d) * time.Millisecond
}

// stampHeight is the barcode's height in rows for a frame w pixels wide.
func stampHeight(w int) int {
	h := (w/StampBlocks + 15) / 16 * 16
	return max(h, StampMinHeight)
}

// stampBits are the StampBlocks block values (true = white) for ms.
func stampBits(ms uint32) [StampBlocks]bool {
	var bits [StampBlocks]bool
	bits[0] = true // white reference; bits[1] stays black
	ms &= stampMask
	for i := range StampTimeBits {
		bits[stampRefBlocks+i] = ms>>(StampTimeBits-1-i)&1 == 1
	}
	crc := stampCRC(ms)
	for i := range stampCRCBits {
		bits[stampRefBlocks+StampTimeBits+i] = crc>>(stampCRCBits-1-i)&1 == 1
	}
	return bits
}

// stampCRC is CRC-8 (polynomial 0x07) over ms as 4 big-endian bytes: it
// catches every one- and two-block misread. page.html computes the same.
func stampCRC(ms uint32) uint8 {
	var crc uint8
	for _, b := range [4]uint8{uint8(ms >> 24), uint8(ms >> 16), uint8(ms >> 8), uint8(ms)} {
		crc ^= b
		for range 8 {
			if crc&0x80 != 0 {
				crc = crc<<1 ^ 0x07
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// WriteStamp draws the barcode for ms over the top rows of img, in place.
// It reports false, leaving img alone, for an image it cannot draw on or one
// too small to carry the barcode.
func WriteStamp(img image.Image, ms uint32) bool {
	b := img.Bounds()
	w, h := b.Dx(), stampHeight(b.Dx())
	if w < StampBlocks || b.Dy() < h {
		return false
	}
	bits := stampBits(ms)
	switch m := img.(type) {
	case *image.YCbCr:
		for y := b.Min.Y; y < b.Min.Y+h; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				v := uint8(stampBlack)
				if bits[(x-b.Min.X)*StampBlocks/w] {
					v = stampWhite
				}
				m.Y[m.YOffset(x, y)] = v
				// Neutral chroma: the camera's colours would otherwise tint the
				// blocks, and the reader only wants black and white.
				c := m.COffset(x, y)
				m.Cb[c], m.Cr[c] = 128, 128
			}
		}
	case draw.Image:
		for y := b.Min.Y; y < b.Min.Y+h; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				v := color.Gray{Y: stampBlack}
				if bits[(x-b.Min.X)*StampBlocks/w] {
					v.Y = stampWhite
				}
				m.Set(x, y, v)
			}
		}
	default:
		return false
	}
	return true
}

// ReadStamp reads the barcode back from a (decoded, possibly scaled) frame.
// ok is false when there is no barcode or any block is not clearly black or
// white or the check fails: such a frame gives no sample rather than a wrong
// one. page.html implements the same reading in the browser.
func ReadStamp(img image.Image) (ms uint32, ok bool) {
	b := img.Bounds()
	w := b.Dx()
	bw := float64(w) / StampBlocks
	if bw < 2 || float64(b.Dy()) < bw {
		return 0, false
	}
	var lum [StampBlocks]float64
	for i := range lum {
		// The centre half of the block (as tall as it is wide): away from
		// edges blurred by the codec or by scaling.
		x0, x1 := b.Min.X+int(float64(i)*bw+bw/4), b.Min.X+int(float64(i)*bw+3*bw/4+0.5)
		y0, y1 := b.Min.Y+int(bw/4), b.Min.Y+int(3*bw/4+0.5)
		var sum, n float64
		for y := y0; y < y1; y++ {
			for x := x0; x < x1; x++ {
				sum += float64(color.GrayModel.Convert(img.At(x, y)).(color.Gray).Y)
				n++
			}
		}
		lum[i] = sum / n
	}
	bits, ok := stampDecide(lum)
	if !ok {
		return 0, false
	}
	var crc uint8
	for i := range StampTimeBits {
		ms = ms<<1 | b2u(bits[stampRefBlocks+i])
	}
	for i := range stampCRCBits {
		crc = crc<<1 | uint8(b2u(bits[stampRefBlocks+StampTimeBits+i]))
	}
	return ms, crc == stampCRC(ms)
}

// stampDecide turns block brightnesses into bits, thresholding halfway
// between the reference blocks; a block within a quarter of the contrast of
// the threshold is undecided, and so is a frame without clear references.
func stampDecide(lum [StampBlocks]float64) (bits [StampBlocks]bool, ok bool) {
	white, black := lum[0], lum[1]
	contrast := white - black
	if contrast < 64 {
		return bits, false
	}
	thr, margin := (white+black)/2, contrast/4
	for i, l := range lum {
		switch {
		case l > thr+margin:
			bits[i] = true
		case l < thr-margin:
		default:
			return bits, false
		}
	}
	return bits, true
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// stampVideo stamps each camera frame with the time it left the camera. It
// goes before the gate, so the stamp is on what the camera gave and the
// slate (made by the gate) never carries one. Off, it passes frames through.
func stampVideo(on bool) video.TransformFunc {
	return func(r video.Reader) video.Reader {
		if !on {
			return r
		}
		return video.ReaderFunc(func() (image.Image, func(), error) {
			img, release, err := r.Read()
			if err == nil {
				WriteStamp(img, StampMs(time.Now()))
			}
			return img, release, err
		})
	}
}
