//go:build linux && cgo && (amd64 || arm64)

package encoder

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// On a machine without an H.264 block (this CI machine, a Pi 5, a PC) the
// registry falls back to software and doctor's line says why.
func TestWithoutAnEncoderNodeSoftwareIsChosenAndDoctorSaysWhy(t *testing.T) {
	if m, _ := filepath.Glob("/dev/video*"); len(m) > 0 {
		t.Skipf("this machine has V4L2 nodes %v: the fallback is shown by the fake-driven tests", m)
	}
	c, err := Choose(Video, "auto", Settings{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Chosen.Name != "openh264" {
		t.Fatalf("chose %s", c.Chosen.Name)
	}
	if ex := c.Explain(); !strings.Contains(ex, "v4l2m2m (unusable: no V4L2 memory-to-memory encoder: no /dev/video* nodes") {
		t.Errorf("doctor's line does not say why the hardware encoder is not used: %s", ex)
	}
}

// VAAPI cannot run here (no GPU): what the probe says instead.
func TestVAAPIProbeRefusesWithoutARenderNode(t *testing.T) {
	dir := t.TempDir()
	err := probeVAAPI(dir)
	if err == nil || !strings.Contains(err.Error(), "renderD*") || !strings.Contains(err.Error(), "i915, amdgpu") {
		t.Errorf("no render node: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "renderD128"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := probeVAAPI(dir); err == nil || !strings.Contains(err.Error(), "not a device node") {
		t.Errorf("a plain file named like a render node: %v", err)
	}
	if _, err := os.Stat("/dev/dri/card0"); err == nil {
		t.Skip("this machine has a GPU")
	}
	if err := probeVAAPI("/dev/dri"); err == nil {
		t.Error("VAAPI probe passed on a machine without /dev/dri/card0")
	}
}
