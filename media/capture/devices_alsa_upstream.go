//go:build cgo && upstreammic

package capture

// With -tags upstreammic the microphone is mediadevices' own ALSA driver,
// whose callback hands on miniaudio's reused buffer (pion/mediadevices
// issue 500): only to measure the difference (the QEMU lab's echo bench,
// KONSULT_LAB_BENCH_TAGS=upstreammic). The unit uses devices_alsa.go.
import _ "github.com/pion/mediadevices/pkg/driver/microphone"

// MicrophoneChunksDropped: mediadevices' driver does not count (its
// callback waits for the reader instead).
func MicrophoneChunksDropped() uint64 { return 0 }
