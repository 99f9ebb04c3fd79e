package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// `roomctl --help` is how an installer (and help2man) reads the commands: it
// must show them and succeed.
func TestHelpSucceeds(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, &errOut); err != nil {
		t.Fatalf("roomctl --help failed: %v", err)
	}
	help := out.String() + errOut.String()
	for _, want := range []string{"usage: roomctl", "status", "doctor", "watch"} {
		if !strings.Contains(help, want) {
			t.Errorf("roomctl --help does not mention %q:\n%s", want, help)
		}
	}
}
