package board

import (
	"os"
	"strings"
)

// Model is the hardware's model as the device tree names it ("Raspberry
// Pi 4 Model B Rev 1.5"), or fallback where there is none (a PC).
func Model(fallback string) string {
	if b, err := os.ReadFile("/proc/device-tree/model"); err == nil {
		if m := strings.TrimRight(string(b), "\x00\n"); m != "" {
			return m
		}
	}
	return fallback
}
