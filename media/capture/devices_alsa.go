//go:build cgo

package capture

// The unit's real microphone: ALSA through miniaudio (malgo, cgo).
import _ "github.com/pion/mediadevices/pkg/driver/microphone"
