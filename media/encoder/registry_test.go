package encoder

import (
	"errors"
	"strings"
	"testing"
)

func withBackends(t *testing.T, bs ...Backend) {
	t.Helper()
	mu.Lock()
	saved := backends
	backends = bs
	mu.Unlock()
	t.Cleanup(func() { mu.Lock(); backends = saved; mu.Unlock() })
}

func TestChooseBestUsable(t *testing.T) {
	withBackends(t,
		Backend{Name: "soft-h264", Codec: "H264", Kind: Video, Quality: 50, License: "BSD"},
		Backend{Name: "v4l2m2m", Codec: "H264", Kind: Video, Quality: 100, License: "kernel",
			Probe: func(Settings) error { return errors.New("no /dev/video11") }},
		Backend{Name: "soft-vp8", Codec: "VP8", Kind: Video, Quality: 40, License: "BSD"},
		Backend{Name: "opus", Codec: "opus", Kind: Audio, Quality: 50, License: "BSD"},
	)
	c, err := Choose(Video, "auto", Settings{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Chosen.Name != "soft-h264" {
		t.Fatalf("chose %s: want the best usable, not the unusable hardware one", c.Chosen.Name)
	}
	ex := c.Explain()
	for _, want := range []string{"soft-h264", "v4l2m2m (unusable: no /dev/video11)", "soft-vp8"} {
		if !strings.Contains(ex, want) {
			t.Errorf("explanation %q lacks %q", ex, want)
		}
	}
	if c, _ := Choose(Video, "VP8", Settings{}); c.Chosen == nil || c.Chosen.Name != "soft-vp8" {
		t.Fatalf("codec VP8 asked, got %+v", c.Chosen)
	}
	if _, err := Choose(Video, "AV1", Settings{}); !errors.Is(err, ErrNone) {
		t.Fatalf("AV1: err %v, want ErrNone", err)
	}
}

func TestHardwareWinsWhenPresent(t *testing.T) {
	withBackends(t,
		Backend{Name: "soft-h264", Codec: "H264", Kind: Video, Quality: 50},
		Backend{Name: "v4l2m2m", Codec: "H264", Kind: Video, Quality: 100},
	)
	c, err := Choose(Video, "", Settings{})
	if err != nil || c.Chosen.Name != "v4l2m2m" {
		t.Fatalf("got %+v, %v: hardware should win when its probe passes", c.Chosen, err)
	}
}

func TestNoneBuiltIn(t *testing.T) {
	withBackends(t)
	_, err := Choose(Audio, "", Settings{})
	if !errors.Is(err, ErrNone) || !strings.Contains(err.Error(), "cgo") {
		t.Fatalf("err %v: want ErrNone that says why (built without cgo?)", err)
	}
}

// The real build registers openh264 as the default video encoder.
func TestDefaultIsOpenH264(t *testing.T) {
	c, err := Choose(Video, "auto", Settings{})
	if err != nil {
		t.Skipf("no encoder in this build: %v", err)
	}
	if c.Chosen.Name != "openh264" || c.Chosen.License != "BSD-2-Clause" {
		t.Fatalf("default video encoder is %s (%s), want openh264 (BSD)", c.Chosen.Name, c.Chosen.License)
	}
}
