package v4l2m2m

import (
	"fmt"
	"unsafe"
)

// setup takes an opened device to streaming, in the order the stateful
// encoder interface asks for. Each step is a method below; a failure leaves
// what was done for teardown to undo.
func (e *Encoder) setup(w, h int) error {
	e.w, e.h = w, h
	if err := e.setCodedFormat(w, h); err != nil {
		return err
	}
	bpl, size, gh, err := e.setRawFormat(w, h)
	if err != nil {
		return err
	}
	e.setFrameRate()
	e.setControls()
	if err := e.allocateBuffers(bpl, size, gh); err != nil {
		return err
	}
	if err := e.startStreaming(); err != nil {
		return err
	}
	e.inFlight = 0
	e.log.Info("hardware encoder ready", "driver", e.p.Device.Driver, "coded", FourccString(e.p.Coded), "raw", FourccString(e.raw), "size", fmt.Sprintf("%dx%d", w, h), "stride", bpl)
	return nil
}

// setCodedFormat is step 1: the coded format on CAPTURE first, as it
// decides what OUTPUT accepts.
func (e *Encoder) setCodedFormat(w, h int) error {
	var cf format
	cf.Type = e.capType
	if e.p.Device.MPlane {
		pm := cf.pixMP()
		pm.Width, pm.Height, pm.PixelFormat, pm.NumPlanes = uint32(w), uint32(h), e.p.Coded, 1
		pm.PlaneFmt[0].SizeImage = uint32(w * h * 3 / 2)
	} else {
		px := cf.pix()
		px.Width, px.Height, px.PixelFormat = uint32(w), uint32(h), e.p.Coded
		px.SizeImage = uint32(w * h * 3 / 2)
	}
	if err := e.dev.ioctl(vidiocSFmt, unsafe.Pointer(&cf)); err != nil {
		return e.fail("set coded format "+FourccString(e.p.Coded), vidiocSFmt, err)
	}
	return nil
}

// setRawFormat is step 2: the raw format on OUTPUT. The driver may round
// the size up (vicodec: 640x360 becomes 640x368) and sets the line stride;
// it returns the stride, the buffer size and the height the driver chose.
func (e *Encoder) setRawFormat(w, h int) (bpl, size, gh uint32, err error) {
	e.raw = FourccYU12
	if !contains(e.p.Device.Raw, FourccYU12) && contains(e.p.Device.Raw, FourccNV12) {
		e.raw = FourccNV12
	}
	var of format
	of.Type = e.outType
	if e.p.Device.MPlane {
		pm := of.pixMP()
		pm.Width, pm.Height, pm.PixelFormat, pm.Field, pm.NumPlanes = uint32(w), uint32(h), e.raw, fieldNone, 1
	} else {
		px := of.pix()
		px.Width, px.Height, px.PixelFormat, px.Field = uint32(w), uint32(h), e.raw, fieldNone
	}
	if err := e.dev.ioctl(vidiocSFmt, unsafe.Pointer(&of)); err != nil {
		return 0, 0, 0, e.fail("set raw format "+FourccString(e.raw), vidiocSFmt, err)
	}
	var gw uint32
	if e.p.Device.MPlane {
		pm := of.pixMP()
		bpl, size, gw, gh = pm.PlaneFmt[0].BytesPerLine, pm.PlaneFmt[0].SizeImage, pm.Width, pm.Height
		if pm.PixelFormat != e.raw || pm.NumPlanes != 1 {
			return 0, 0, 0, fmt.Errorf("v4l2m2m %s: driver changed the raw format to %s with %d planes: only single-plane YU12/NV12 is supported", e.p.Device.Path, FourccString(pm.PixelFormat), pm.NumPlanes)
		}
	} else {
		px := of.pix()
		bpl, size, gw, gh = px.BytesPerLine, px.SizeImage, px.Width, px.Height
		if px.PixelFormat != e.raw {
			return 0, 0, 0, fmt.Errorf("v4l2m2m %s: driver changed the raw format to %s: only YU12/NV12 is supported", e.p.Device.Path, FourccString(px.PixelFormat))
		}
	}
	if gw < uint32(w) || gh < uint32(h) || bpl < uint32(w) || uint64(size) < uint64(bpl)*uint64(gh)*3/2 {
		return 0, 0, 0, fmt.Errorf("v4l2m2m %s: driver cannot take %dx%d frames (offers %dx%d, stride %d, %d bytes): pick a capture size it supports", e.p.Device.Path, w, h, gw, gh, bpl, size)
	}
	return bpl, size, gh, nil
}

// setFrameRate is step 3: rate control needs the frame rate, but the API
// makes it optional, so a refusal is only logged.
func (e *Encoder) setFrameRate() {
	if e.p.FPS > 0 {
		var sp streamParm
		sp.Type = e.outType
		op := (*outputParm)(unsafe.Pointer(&sp.Parm[0]))
		op.TimePerFrame = fract{1, uint32(e.p.FPS)}
		if err := e.dev.ioctl(vidiocSParm, unsafe.Pointer(&sp)); err != nil {
			e.log.Debug("driver takes no frame rate", "err", err)
		}
	}
}

// setControls is step 4. Each control is optional in the API and drivers
// differ (vicodec has GOP size only); what the driver refuses is logged,
// not fatal.
func (e *Encoder) setControls() {
	ctrls := []struct {
		name string
		id   uint32
		v    int32
	}{
		{"GOP size", cidGOPSize, int32(e.p.KeyFrameInterval)},
		{"bitrate mode CBR", cidBitrateMode, bitrateModeCBR},
		{"bitrate", cidBitrate, int32(e.p.BitRate)},
	}
	if e.p.Coded == FourccH264 {
		ctrls = append(ctrls, []struct {
			name string
			id   uint32
			v    int32
		}{
			{"H.264 profile constrained baseline", cidH264Profile, h264ProfileConstrainedBP},
			{"H.264 level 3.1", cidH264Level, h264Level31},
			{"H.264 I-frame period", cidH264IPeriod, int32(e.p.KeyFrameInterval)},
			// A browser joining late needs SPS/PPS before every IDR.
			{"repeat SPS/PPS", cidRepeatSeqHeader, 1},
		}...)
	}
	for _, c := range ctrls {
		if c.v <= 0 && c.id != cidH264Profile {
			continue
		}
		if err := e.setCtrl(c.id, c.v); err != nil {
			if c.id == cidH264Profile {
				// Some blocks know only (non-constrained) baseline: the
				// same bitstream for a decoder that sees no B-frames or FMO.
				if err2 := e.setCtrl(c.id, h264ProfileBaseline); err2 == nil {
					continue
				}
			}
			e.log.Info("encoder control not supported by the driver", "control", c.name, "err", err)
		}
	}
}

// allocateBuffers is step 5: buffers on both queues, mapped. OUTPUT
// buffers take the raw layout setRawFormat got from the driver.
func (e *Encoder) allocateBuffers(bpl, size, gh uint32) error {
	var err error
	if e.out, err = e.allocate(e.outType, defaultOutputBufferCount); err != nil {
		return err
	}
	for i := range e.out {
		e.out[i].bytesPerLine, e.out[i].sizeImage, e.out[i].height = bpl, size, gh
		e.outFree = append(e.outFree, i)
	}
	if e.cap, err = e.allocate(e.capType, defaultCaptureBufferCount); err != nil {
		return err
	}
	return nil
}

// startStreaming is step 6: every CAPTURE buffer queued, then both queues
// streaming.
func (e *Encoder) startStreaming() error {
	for i := range e.cap {
		if err := e.queue(e.capType, i, 0); err != nil {
			return err
		}
	}
	for _, t := range []uint32{e.outType, e.capType} {
		t := t
		if err := e.dev.ioctl(vidiocStreamon, unsafe.Pointer(&t)); err != nil {
			return e.fail("stream on", vidiocStreamon, err)
		}
	}
	return nil
}
