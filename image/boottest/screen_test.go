package boottest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The idle screen as appliance/screen/page/screen.css draws it: a #111
// background, the room's name in #eee and "Press JOIN to start" in #8fd18f
// in the middle, the notice on #1d2a36 along the bottom.
var (
	idleBackground = color.RGBA{0x11, 0x11, 0x11, 0xff}
	idleText       = color.RGBA{0xee, 0xee, 0xee, 0xff}
	idlePress      = color.RGBA{0x8f, 0xd1, 0x8f, 0xff}
	idleNotice     = color.RGBA{0x1d, 0x2a, 0x36, 0xff}
)

// screenCounts is how much of a screen is in each of the idle screen's
// colours (fractions of the pixels, the text ones of the middle band).
type screenCounts struct {
	Background, Notice, Text, Press float64
}

func (c screenCounts) String() string {
	return fmt.Sprintf("background #111 %.1f%%, notice #1d2a36 %.1f%%, light text %.2f%% and green \"Press JOIN\" %.2f%% of the middle band",
		100*c.Background, 100*c.Notice, 100*c.Text, 100*c.Press)
}

func near(c color.Color, want color.RGBA, tol int) bool {
	r, g, b, _ := c.RGBA()
	d := func(v uint32, w uint8) bool { x := int(v>>8) - int(w); return x <= tol && x >= -tol }
	return d(r, want.R) && d(g, want.G) && d(b, want.B)
}

func countScreen(img image.Image) screenCounts {
	bd := img.Bounds()
	var bg, notice, text, press, all, band int
	for y := bd.Min.Y; y < bd.Max.Y; y++ {
		middle := y >= bd.Min.Y+bd.Dy()/4 && y < bd.Min.Y+bd.Dy()*3/4
		for x := bd.Min.X; x < bd.Max.X; x++ {
			c := img.At(x, y)
			all++
			switch {
			case near(c, idleBackground, 4):
				bg++
			case near(c, idleNotice, 4):
				notice++
			}
			if middle {
				band++
				switch {
				case near(c, idleText, 24):
					text++
				case near(c, idlePress, 24):
					press++
				}
			}
		}
	}
	if all == 0 || band == 0 {
		return screenCounts{}
	}
	return screenCounts{Background: float64(bg) / float64(all), Notice: float64(notice) / float64(all),
		Text: float64(text) / float64(band), Press: float64(press) / float64(band)}
}

// isIdleScreen says whether img is the idle screen: mostly its dark
// background, the room's name and "Press JOIN to start" in their colours
// in the middle, and the notice's bar. The call, fault and private
// screens, a console or a blank screen each miss at least one.
func isIdleScreen(img image.Image) (bool, screenCounts) {
	c := countScreen(img)
	return c.Background > 0.6 && c.Notice > 0.02 && c.Text > 0.003 && c.Press > 0.003, c
}

// decodePPM reads QEMU's screendump (binary PPM, P6, maxval 255).
func decodePPM(r io.Reader) (image.Image, error) {
	br := bufio.NewReader(r)
	var fields []int
	var magic string
	for len(fields) < 3 {
		var tok string
		if _, err := fmt.Fscan(br, &tok); err != nil {
			return nil, fmt.Errorf("ppm header: %w", err)
		}
		if tok[0] == '#' {
			_, _ = br.ReadString('\n')
			continue
		}
		if magic == "" {
			magic = tok
			continue
		}
		n, err := strconv.Atoi(tok)
		if err != nil {
			return nil, fmt.Errorf("ppm header: %w", err)
		}
		fields = append(fields, n)
	}
	if magic != "P6" || fields[2] != 255 {
		return nil, fmt.Errorf("not a binary PPM with maxval 255 (%s, %d)", magic, fields[2])
	}
	if _, err := br.ReadByte(); err != nil { // the one whitespace after maxval
		return nil, err
	}
	w, h := fields[0], fields[1]
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	px := make([]byte, 3*w*h)
	if _, err := io.ReadFull(br, px); err != nil {
		return nil, fmt.Errorf("ppm pixels: %w", err)
	}
	for i := 0; i < w*h; i++ {
		img.Pix[4*i], img.Pix[4*i+1], img.Pix[4*i+2], img.Pix[4*i+3] = px[3*i], px[3*i+1], px[3*i+2], 0xff
	}
	return img, nil
}

// qmp is a connection to QEMU's monitor (QMP) on a unix socket.
type qmp struct {
	c   net.Conn
	dec *json.Decoder
}

func dialQMP(path string, wait time.Duration) (*qmp, error) {
	var c net.Conn
	var err error
	for end := time.Now().Add(wait); ; time.Sleep(100 * time.Millisecond) {
		if c, err = net.Dial("unix", path); err == nil || time.Now().After(end) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	q := &qmp{c: c, dec: json.NewDecoder(c)}
	var greeting map[string]any
	if err := q.dec.Decode(&greeting); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if err := q.do("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// do runs a command and waits for its answer (events in between are skipped).
func (q *qmp) do(cmd string, args map[string]any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	if err := json.NewEncoder(q.c).Encode(req); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	_ = q.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		var resp struct {
			Return *json.RawMessage `json:"return"`
			Error  *struct {
				Desc string `json:"desc"`
			} `json:"error"`
		}
		if err := q.dec.Decode(&resp); err != nil {
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if resp.Error != nil {
			return fmt.Errorf("qmp %s: %s", cmd, resp.Error.Desc)
		}
		if resp.Return != nil {
			return nil
		}
	}
}

// screendump asks QEMU for the screen as PPM and decodes it.
func (q *qmp) screendump(path string) (image.Image, error) {
	if err := q.do("screendump", map[string]any{"filename": path}); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return decodePPM(f)
}

func writePNG(path string, img image.Image) error {
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// The classifier on the screen page's own screenshots (docs/screen): the
// idle one passes, the others do not; and a PPM round-trips.
func TestIdleScreenClassifier(t *testing.T) {
	for name, want := range map[string]bool{"idle": true, "call": false, "private": false, "fault": false, "call-800x480": false} {
		f, err := os.Open("../../docs/screen/" + name + ".png")
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		got, c := isIdleScreen(img)
		t.Logf("%s: %s", name, c)
		if got != want {
			t.Errorf("%s.png: idle %v, want %v (%s)", name, got, want, c)
		}
	}
	img := image.NewRGBA(image.Rect(0, 0, 3, 2))
	img.Set(1, 1, idlePress)
	var b bytes.Buffer
	fmt.Fprintf(&b, "P6\n# qemu\n3 2\n255\n")
	for i := 0; i < 6; i++ {
		p := img.Pix[4*i : 4*i+3]
		b.Write(p)
	}
	got, err := decodePPM(&b)
	if err != nil {
		t.Fatal(err)
	}
	if !near(got.At(1, 1), idlePress, 0) || !near(got.At(0, 0), color.RGBA{}, 0) {
		t.Errorf("PPM decode: %v %v", got.At(1, 1), got.At(0, 0))
	}
}

// screenShots takes the boot test's screendumps, at most one every 2 s,
// and remembers when the idle screen first showed.
type screenShots struct {
	t          *testing.T
	q          *qmp
	ppm        string
	last       image.Image
	lastAt     time.Time
	lastCounts screenCounts
	n          int
	idleAt     time.Time
	idle       image.Image
	idleTimes  []time.Time
}

func newScreenShots(t *testing.T, q *qmp, dir string) *screenShots {
	return &screenShots{t: t, q: q, ppm: filepath.Join(dir, "screen.ppm")}
}

func (s *screenShots) poll() {
	if time.Since(s.lastAt) < 2*time.Second {
		return
	}
	s.lastAt = time.Now()
	img, err := s.q.screendump(s.ppm)
	if err != nil {
		s.t.Logf("screendump: %v", err)
		return
	}
	s.n++
	s.last = img
	var ok bool
	ok, s.lastCounts = isIdleScreen(img)
	if !ok {
		return
	}
	s.idleTimes = append(s.idleTimes, s.lastAt)
	if s.idleAt.IsZero() {
		s.idleAt, s.idle = s.lastAt, img
	}
}

// againAfter is the first screendump after t that showed the idle screen.
func (s *screenShots) againAfter(t time.Time) time.Time {
	for _, at := range s.idleTimes {
		if at.After(t) {
			return at
		}
	}
	return time.Time{}
}

// artifact is where a screen goes: beside KONSULT_BOOT_RESULT (dist/ under
// make image-test), else the test's directory.
func (s *screenShots) artifact(name string) string {
	if p := os.Getenv("KONSULT_BOOT_RESULT"); p != "" {
		return filepath.Join(filepath.Dir(p), name)
	}
	return filepath.Join(filepath.Dir(s.ppm), name)
}

// saveIdle writes the first idle screendump as PNG and returns its path.
func (s *screenShots) saveIdle() string {
	if s.idle == nil {
		return "(none)"
	}
	p := s.artifact("boottest-screen.png")
	if err := writePNG(p, s.idle); err != nil {
		s.t.Errorf("save the screen: %v", err)
	}
	return p
}

// saveLast keeps the last screendump, whatever it showed: what to look at
// when the idle screen did not come.
func (s *screenShots) saveLast() {
	if s.last == nil {
		return
	}
	p := s.artifact("boottest-screen-last.png")
	if err := writePNG(p, s.last); err == nil {
		s.t.Logf("last screendump (%s) in %s", s.lastCounts, p)
	}
}

// pageSource says who served the page the kiosk showed.
func pageSource(display string) string {
	switch {
	case strings.Contains(display, "ActiveState=active"):
		return "the boot test's stand-in page: roomd wrote no display.url"
	case strings.Contains(display, "ConditionResult=no"):
		return "roomd's page"
	}
	return "page source unknown"
}

// checkKiosk checks konsult-kiosk.service as report.sh saw it: up as its
// own unprivileged user after roomd's READY=1, with the policy in place,
// and back after it was killed.
func checkKiosk(t *testing.T, out string) {
	t.Helper()
	show := section(out, "kiosk-show")
	for _, want := range []string{"ActiveState=active", "User=konsult-kiosk"} {
		if !strings.Contains(show, want) {
			t.Errorf("systemctl show konsult-kiosk lacks %s:\n%s", want, show)
		}
	}
	if started, ready := showUsec(show, "ExecMainStartTimestampMonotonic"), showUsec(section(out, "roomd-show"), "ActiveEnterTimestampMonotonic"); started == 0 || started < ready {
		t.Errorf("the kiosk started (%d µs) before roomd was ready (%d µs)", started, ready)
	}
	ps := section(out, "kiosk-proc-status")
	for _, re := range []string{`NoNewPrivs:\s+1`, `CapEff:\s+0+\b`, `Uid:\s+[1-9]\d*\s`} {
		if !regexp.MustCompile(re).MatchString(ps) {
			t.Errorf("the kiosk's /proc status does not match %s:\n%s", re, ps)
		}
	}
	procs := section(out, "kiosk-procs")
	for _, l := range strings.Split(strings.TrimSpace(procs), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[1] != "konsult-kiosk" {
			t.Errorf("a kiosk process runs as %s, not konsult-kiosk: %s", f[1], l)
		}
	}
	if !strings.Contains(procs, "chromium") || !strings.Contains(procs, "cage") {
		t.Errorf("no cage and chromium processes:\n%s", procs)
	}
	if cg := section(out, "kiosk-cgroup"); !strings.Contains(cg, "0::/system.slice/konsult-kiosk.service") {
		t.Errorf("the kiosk is not in its unit's cgroup (so not under its IPAddressDeny=, DevicePolicy=, MemoryMax=):\n%s", cg)
	}
	if sec := section(out, "kiosk-secret"); !strings.Contains(sec, "cmdlines-with-secret: 0") {
		t.Errorf("another local user can read the screen's secret in a process's command line:\n%s", sec)
	}
	if !strings.Contains(section(out, "kiosk-policy"), "konsult.json") {
		t.Errorf("no Chromium policy /etc/chromium/policies/managed/konsult.json:\n%s", section(out, "kiosk-policy"))
	}
	after := section(out, "kiosk-after")
	before := showUsec(section(out, "kiosk-reset"), "NRestarts")
	m := regexp.MustCompile(`pids: (\d+) -> (\d+)`).FindStringSubmatch(after)
	if m == nil || m[1] == m[2] || m[2] == "0" || !strings.Contains(after, "ActiveState=active") || showUsec(after, "NRestarts") <= before {
		t.Errorf("the kiosk did not come back after it was killed:\n%s", after)
	}
}
