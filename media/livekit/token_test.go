package livekit

import "testing"

func TestSignHS256KnownAnswer(t *testing.T) {
	// Known answer computed independently with openssl:
	// printf '%s' "$h.$p" | openssl dgst -sha256 -hmac your-256-bit-secret -binary | basenc --base64url
	got, err := signHS256("your-256-bit-secret", map[string]any{"sub": "1234567890"})
	if err != nil {
		t.Fatal(err)
	}
	want := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
	if got != want {
		t.Fatalf("signHS256 = %s, want %s", got, want)
	}
}

func TestJoinTokenNeedsKeyPair(t *testing.T) {
	if _, err := JoinToken("", "s", "unit", "room", 60); err == nil {
		t.Fatal("minted a token without an API key")
	}
}
