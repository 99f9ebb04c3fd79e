package livekit

import (
	"strings"
	"testing"

	"github.com/konsult/konsult/media/gate"
)

// The URL is shown by doctor and in errors, so it must never carry a secret.
func TestURLWithCredentialsRefused(t *testing.T) {
	for _, u := range []string{
		"https://unit:hunter2@livekit.clinic.example",
		"https://livekit.clinic.example/?access_token=eyJsecret",
		"not a url",
	} {
		_, err := NewWHIP(Config{URL: u, Room: "r", Identity: "i", Token: "tok-abcdef123456"}, Media{FPS: 30}, gate.New(), nil)
		if err == nil {
			t.Errorf("%q accepted", u)
			continue
		}
		for _, secret := range []string{"hunter2", "eyJsecret", "tok-abcdef123456"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%q: the error repeats a secret: %v", u, err)
			}
		}
	}
}
