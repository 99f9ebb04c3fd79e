//go:build !cgo && linux && (amd64 || arm64)

package capture

import "errors"

var errNoSlateCoder = errors.New("no H.264 coder for the privacy slate: roomd is built without cgo (openh264)")

// SlateAvailable reports whether SlateH264 can code the slate here.
func SlateAvailable() error { return errNoSlateCoder }

// SlateH264 needs openh264 (cgo); without it camera pass-through has no
// slate and is not used.
func SlateH264(w, h, fps int) ([][]byte, error) { return nil, errNoSlateCoder }
