package encoder

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// probeVAAPI says why VAAPI cannot run on this machine, or nil. It is kept
// out of the vaapi build tag so that the refusal can be tested (and
// explained by doctor) on machines without libva or a GPU.
//
// mediadevices' vaapi codec opens dir/card0 itself (not a render node), so
// both are checked: a render node says a VAAPI-capable driver is loaded,
// card0 is what the library will open.
func probeVAAPI(dir string) error {
	render, _ := filepath.Glob(filepath.Join(dir, "renderD*"))
	if len(render) == 0 {
		return fmt.Errorf("no %s node: no Intel/AMD GPU, or its kernel driver (i915, amdgpu) is not loaded", filepath.Join(dir, "renderD*"))
	}
	for _, p := range append(render[:1:1], filepath.Join(dir, "card0")) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%s: %w (mediadevices' VAAPI encoder opens card0)", p, err)
		}
		if fi.Mode()&os.ModeCharDevice == 0 {
			return fmt.Errorf("%s is not a device node", p)
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			if errors.Is(err, os.ErrPermission) {
				return fmt.Errorf("%s: permission denied: add roomd's user to the render and video groups", p)
			}
			return fmt.Errorf("open %s: %w", p, err)
		}
		f.Close()
	}
	return nil
}
