//go:build linux && (amd64 || arm64)

// Command labbench runs in the QEMU lab guest: it captures frames from the
// vivid camera once, then encodes the same frames through the V4L2
// memory-to-memory backend (vicodec, FWHT) and the software backend
// (openh264), and prints frames per second for each as JSON. With -echo it
// measures the unit's echo canceller through snd-aloop instead (echo.go).
// Lab equipment, never shipped.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pion/mediadevices/pkg/codec"
	"github.com/pion/mediadevices/pkg/codec/openh264"
	"github.com/pion/mediadevices/pkg/driver"
	_ "github.com/pion/mediadevices/pkg/driver/camera"
	"github.com/pion/mediadevices/pkg/frame"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"

	"github.com/konsult/konsult/media/encoder/v4l2m2m"
)

type result struct {
	Backend string  `json:"backend"`
	Device  string  `json:"device,omitempty"`
	Frames  int     `json:"frames"`
	Bytes   int     `json:"bytes"`
	Keys    int     `json:"keyframes"`
	FPS     float64 `json:"fps"`
	Error   string  `json:"error,omitempty"`
}

func main() {
	n := flag.String("frames", "60", "frames to encode")
	camera := flag.String("camera", "video0", "vivid's node name (mediadevices labels cameras \"video0;video0\")")
	echoMode := flag.Bool("echo", false, "measure the echo canceller through the ALSA loopback instead (echo.go)")
	mic := flag.String("mic", "64656661756c74", "the echo mode's microphone, as roomd's conference.microphone (\"default\" in hex)")
	speaker := flag.String("speaker", "default", "the echo mode's speaker, as roomd's conference.speaker")
	settle := flag.Duration("settle", 8*time.Second, "the echo mode's convergence time before the window")
	window := flag.Duration("window", 6*time.Second, "the echo mode's measured window")
	offline := flag.Bool("recorded", true, "the echo mode records both devices in real time and runs the canceller over the recording after (false: in line, as roomd; under TCG the canceller's CPU starves the microphone)")
	flag.Parse()
	if *echoMode {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		res := echo(*mic, *speaker, *settle, *window, *offline)
		_ = json.NewEncoder(os.Stdout).Encode(res)
		if res.Error != "" {
			os.Exit(1)
		}
		return
	}
	count, _ := strconv.Atoi(*n)
	if count <= 0 {
		count = 60
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	frames, err := grab(*camera, count)
	out := map[string]any{}
	if err != nil {
		out["error"] = err.Error()
		_ = json.NewEncoder(os.Stdout).Encode(out)
		os.Exit(1)
	}
	b := frames[0].Bounds()
	out["size"] = fmt.Sprintf("%dx%d", b.Dx(), b.Dy())
	out["results"] = []result{m2m(frames), software(frames)}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

func grab(path string, n int) ([]image.Image, error) {
	var cam driver.Driver
	for _, d := range driver.GetManager().Query(driver.FilterVideoRecorder()) {
		if strings.Contains(d.Info().Label, path) {
			cam = d
		}
	}
	if cam == nil {
		return nil, fmt.Errorf("no camera %s", path)
	}
	if err := cam.Open(); err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer cam.Close()
	r, err := cam.(driver.VideoRecorder).VideoRecord(prop.Media{Video: prop.Video{Width: 640, Height: 360, FrameFormat: frame.FormatYUYV}})
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", path, err)
	}
	r = video.ToI420(r)
	var out []image.Image
	for len(out) < n {
		img, release, err := r.Read()
		if err != nil {
			return nil, err
		}
		y := img.(*image.YCbCr)
		c := *y
		c.Y, c.Cb, c.Cr = append([]byte(nil), y.Y...), append([]byte(nil), y.Cb...), append([]byte(nil), y.Cr...)
		out = append(out, &c)
		if release != nil {
			release()
		}
	}
	return out, nil
}

func replay(frames []image.Image) video.Reader {
	i := 0
	return video.ReaderFunc(func() (image.Image, func(), error) {
		if i >= len(frames) {
			return nil, nil, io.EOF
		}
		i++
		return frames[i-1], func() {}, nil
	})
}

func run(name, dev string, b codec.VideoEncoderBuilder, frames []image.Image) result {
	res := result{Backend: name, Device: dev}
	bd := frames[0].Bounds()
	enc, err := b.BuildVideoEncoder(replay(frames), prop.Media{Video: prop.Video{Width: bd.Dx(), Height: bd.Dy(), FrameRate: 30}})
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer enc.Close()
	t := time.Now()
	for res.Frames < len(frames) {
		data, release, err := enc.Read()
		if err != nil {
			if err != io.EOF && !strings.Contains(err.Error(), "EOF") {
				res.Error = err.Error()
			}
			break
		}
		res.Frames++
		res.Bytes += len(data)
		release()
	}
	if e, ok := enc.(*v4l2m2m.Encoder); ok {
		res.Keys = int(e.KeyFrames.Load())
	}
	res.FPS = float64(res.Frames) / time.Since(t).Seconds()
	return res
}

func m2m(frames []image.Image) result {
	d, err := v4l2m2m.Find(v4l2m2m.FourccFWHT)
	if err != nil {
		return result{Backend: "v4l2m2m", Error: err.Error()}
	}
	return run("v4l2m2m", d.String(), &v4l2m2m.Params{Device: d, Coded: v4l2m2m.FourccFWHT, KeyFrameInterval: 30, BitRate: 1_200_000}, frames)
}

func software(frames []image.Image) result {
	p, err := openh264.NewParams()
	if err != nil {
		return result{Backend: "openh264", Error: err.Error()}
	}
	p.BitRate, p.KeyFrameInterval = 1_200_000, 30
	return run("openh264", "", &p, frames)
}
