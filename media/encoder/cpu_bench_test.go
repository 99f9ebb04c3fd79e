//go:build linux && cgo

package encoder

import (
	"bytes"
	"fmt"
	"image"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/mediadevices/pkg/frame"
	"github.com/pion/mediadevices/pkg/io/video"
	"github.com/pion/mediadevices/pkg/prop"
)

// The CPU benchmark's picture: 720p at 30 fps and 2.5 Mbit/s, the settings a
// 720p call would use; 300 frames (10 s) give rate control time to settle.
const (
	cpuW, cpuH, cpuFPS = 1280, 720, 30
	cpuFrames          = 300
	cpuBitRate         = 2_500_000
	rusageThread       = 1 // RUSAGE_THREAD (Linux); package syscall does not name it
)

// BenchmarkEncodeCPU: CPU time per 720p frame of roomd's software video
// encoders (built through the registry exactly as a call builds them) against
// Debian's ffmpeg encoding the same raw frames at the same bitrate.
//
// Both sides are whole-process CPU (user+sys, getrusage): roomd's encoder
// may run threads of its own (openh264 picks its thread count), which a
// per-thread figure would miss. ffmpeg-base-cpu-ms/frame is ffmpeg reading
// and discarding the same frames without encoding: its start-up and I/O,
// to subtract for an encoder-only figure. The *-kbps metrics are the bitrate
// each side achieved: a comparison only holds if they are close.
//
// roomd's frames are fed at camera pace (30 fps) because mediadevices gives
// libvpx wall-clock timestamps, and libvpx's realtime mode (cpu-used 0, the
// library default roomd keeps) picks its speed from the time a frame may
// take; ffmpeg gets 30 fps timestamps from -r 30, so it budgets the same.
func BenchmarkEncodeCPU(b *testing.B) {
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		b.Skip("ffmpeg not found: this benchmark compares against it; install it with `apt-get install -y ffmpeg`")
	}
	dir := b.TempDir()
	frames := cpuBenchFrames()
	raw := filepath.Join(dir, "frames.yuv")
	if err := os.WriteFile(raw, bytes.Join(frames, nil), 0o600); err != nil {
		b.Fatal(err)
	}
	input := []string{"-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", fmt.Sprintf("%dx%d", cpuW, cpuH), "-r", strconv.Itoa(cpuFPS), "-i", raw}
	encoders := ffmpegEncoders(b, ffmpeg)

	b.Run("VP8", func(b *testing.B) {
		// cpu-used 0 and one thread: what roomd's libvpx params leave at
		// libvpx's defaults (ffmpeg's own cpu-used default is 1, and it
		// would start a thread per core). Key frame every 2 s, as roomd asks.
		args := append(append([]string{}, input...), "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "0", "-threads", "1",
			"-b:v", strconv.Itoa(cpuBitRate/1000)+"k", "-g", strconv.Itoa(2*cpuFPS), "-f", "ivf")
		compare(b, ffmpeg, input, "libvpx-vp8", "vp8", args, ".ivf", ivfOverhead, frames)
	})
	b.Run("H264", func(b *testing.B) {
		// openh264 inserts an IDR every 30 frames (mediadevices' IntraPeriod;
		// the key frame interval roomd asks for does not reach it).
		var args []string
		var name string
		switch {
		case encoders["libopenh264"]:
			name = "openh264"
			args = append(append([]string{}, input...), "-c:v", "libopenh264", "-allow_skip_frames", "0",
				"-b:v", strconv.Itoa(cpuBitRate/1000)+"k", "-g", "30", "-f", "h264")
		case encoders["libx264"]:
			// Not the same encoder: this ffmpeg has no libopenh264. x264's
			// fastest realtime settings are the nearest software rival.
			name = "x264"
			args = append(append([]string{}, input...), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
				"-b:v", strconv.Itoa(cpuBitRate/1000)+"k", "-g", "30", "-f", "h264")
		default:
			b.Skip("this ffmpeg has neither libopenh264 nor libx264")
		}
		compare(b, ffmpeg, input, "openh264", name, args, ".h264", func(int) int64 { return 0 }, frames)
	})
}

// compare encodes frames with roomd's backend and with ffmpeg (args, writing
// to a file with suffix ext whose container overhead is overhead(frames))
// once per iteration and reports both per frame.
func compare(b *testing.B, ffmpeg string, input []string, backend, ffName string, args []string, ext string, overhead func(int) int64, frames [][]byte) {
	out := filepath.Join(b.TempDir(), "out"+ext)
	var roomdCPU, roomdThread, ffCPU, baseCPU time.Duration
	var roomdBytes, ffBytes int64
	for b.Loop() {
		cpu, thread, n := encodeWithRoomd(b, backend, frames)
		roomdCPU, roomdThread, roomdBytes = roomdCPU+cpu, roomdThread+thread, roomdBytes+n
		ffCPU += runFFmpeg(b, ffmpeg, append(args, "-y", out)...)
		st, err := os.Stat(out)
		if err != nil {
			b.Fatal(err)
		}
		ffBytes += st.Size() - overhead(len(frames))
		baseCPU += runFFmpeg(b, ffmpeg, append(append([]string{}, input...), "-f", "null", "-")...)
	}
	perFrame := func(d time.Duration) float64 { return ms(d) / float64(b.N*len(frames)) }
	kbps := func(n int64) float64 { return float64(n) * 8 * cpuFPS / float64(b.N*len(frames)) / 1000 }
	b.ReportMetric(perFrame(roomdCPU), "roomd-"+backendMetric(backend)+"-cpu-ms/frame")
	b.ReportMetric(perFrame(ffCPU), "ffmpeg-"+ffName+"-cpu-ms/frame")
	b.ReportMetric(perFrame(baseCPU), "ffmpeg-base-cpu-ms/frame")
	b.ReportMetric(kbps(roomdBytes), "roomd-"+backendMetric(backend)+"-kbps")
	b.ReportMetric(kbps(ffBytes), "ffmpeg-"+ffName+"-kbps")
	b.Logf("roomd %s: %.2f ms/frame in the encoding thread, %.2f ms/frame whole process",
		backend, perFrame(roomdThread), perFrame(roomdCPU))
}

func backendMetric(name string) string { return strings.TrimPrefix(name, "libvpx-") }

// encodeWithRoomd encodes frames at camera pace with the registered backend
// called name, as a call does, and returns the process's and the calling
// thread's CPU time and the encoded bytes.
func encodeWithRoomd(b *testing.B, name string, frames [][]byte) (cpu, thread time.Duration, n int64) {
	be := backendNamed(b, name)
	builder, err := be.Video(Settings{BitRate: cpuBitRate, KeyFrameInterval: 2 * cpuFPS})
	if err != nil {
		b.Fatal(err)
	}
	i := 0
	cam := video.ReaderFunc(func() (image.Image, func(), error) {
		if i == len(frames) {
			return nil, func() {}, io.EOF
		}
		f := frames[i]
		i++
		return i420(f), func() {}, nil
	})
	// The encoder runs on this goroutine: pin it to one OS thread so the
	// per-thread figure is the encoding thread's.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tick := time.NewTicker(time.Second / cpuFPS)
	defer tick.Stop()
	self0, thread0 := rusage(b, syscall.RUSAGE_SELF), rusage(b, rusageThread)
	enc, err := builder.BuildVideoEncoder(cam, prop.Media{Video: prop.Video{Width: cpuW, Height: cpuH, FrameRate: cpuFPS, FrameFormat: frame.FormatI420}})
	if err != nil {
		b.Fatal(err)
	}
	for range frames {
		<-tick.C
		data, release, err := enc.Read()
		if err != nil {
			b.Fatal(err)
		}
		n += int64(len(data))
		release()
	}
	if err := enc.Close(); err != nil {
		b.Fatal(err)
	}
	return rusage(b, syscall.RUSAGE_SELF) - self0, rusage(b, rusageThread) - thread0, n
}

func backendNamed(b *testing.B, name string) Backend {
	mu.Lock()
	defer mu.Unlock()
	for _, be := range backends {
		if be.Name == name {
			return be
		}
	}
	b.Fatalf("no %s backend registered", name)
	return Backend{}
}

// runFFmpeg runs ffmpeg and returns its CPU time (user+sys).
func runFFmpeg(b *testing.B, ffmpeg string, args ...string) time.Duration {
	cmd := exec.Command(ffmpeg, append([]string{"-hide_banner", "-nostdin", "-loglevel", "error"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("ffmpeg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

func ffmpegEncoders(b *testing.B, ffmpeg string) map[string]bool {
	out, err := exec.Command(ffmpeg, "-hide_banner", "-encoders").Output()
	if err != nil {
		b.Fatalf("ffmpeg -encoders: %v", err)
	}
	have := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			have[f[1]] = true
		}
	}
	return have
}

// ivfOverhead is IVF's file header and per-frame headers: not bitrate.
func ivfOverhead(frames int) int64 { return 32 + 12*int64(frames) }

func rusage(b *testing.B, who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func i420(f []byte) *image.YCbCr {
	ys, cs := cpuW*cpuH, cpuW*cpuH/4
	return &image.YCbCr{
		Y: f[:ys], Cb: f[ys : ys+cs], Cr: f[ys+cs : ys+2*cs],
		YStride: cpuW, CStride: cpuW / 2,
		SubsampleRatio: image.YCbCrSubsampleRatio420,
		Rect:           image.Rect(0, 0, cpuW, cpuH),
	}
}

// cpuBenchFrames is a deterministic picture with what a room camera gives an
// encoder to do: a slow pan over a textured background (motion search), a
// figure moving across it (new detail every frame) and faint sensor noise
// (bits that cannot be predicted). A still or flat picture would flatter
// every encoder.
func cpuBenchFrames() [][]byte {
	frames := make([][]byte, cpuFrames)
	seed := uint32(0x9E3779B9)
	noise := func() int { // xorshift32: the same noise on every run
		seed ^= seed << 13
		seed ^= seed >> 17
		seed ^= seed << 5
		return int(seed>>29) - 4 // -4..3
	}
	for i := range frames {
		f := make([]byte, cpuW*cpuH*3/2)
		pan := 2 * i
		fx := 100 + (i*6)%(cpuW-400) // the figure walks across, 6 px a frame
		for y := range cpuH {
			for x := range cpuW {
				bx := x + pan
				v := 40 + (bx*3/16+y/8)%96 + 24*((bx/24+y/24)%2) // gradient and tiles
				if x >= fx && x < fx+200 && y >= 200 && y < 600 {
					v = 150 + ((x-fx)*(y-200)/37)%60 // the figure, with its own detail
				}
				f[y*cpuW+x] = uint8(min(max(v+noise(), 16), 235))
			}
		}
		cb, cr := f[cpuW*cpuH:cpuW*cpuH*5/4], f[cpuW*cpuH*5/4:]
		for y := range cpuH / 2 {
			for x := range cpuW / 2 {
				cb[y*cpuW/2+x] = uint8(96 + (x+pan/2)*64/(cpuW/2))
				cr[y*cpuW/2+x] = uint8(160 - y*64/(cpuH/2))
			}
		}
		frames[i] = f
	}
	return frames
}
