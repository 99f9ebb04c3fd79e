package unittoken

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/konsult/konsult/provisioning/fleet"
)

// A consultation's end-to-end key material K stays in the unit's memory
// while JOIN could still enter that consultation, and not after: once the
// schedule moves on (or the grant expires) the cache holds no grant of it,
// and the bytes it held are zero. What a join takes is its own copy.
func TestConsultationKeyIsWipedWhenNoLongerDue(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		want = "c-1"
		now  = time.Now()
		ks   = map[string][]byte{"c-1": bytes.Repeat([]byte{0xA1}, 32), "c-2": bytes.Repeat([]byte{0xB2}, 32)}
	)
	src := &Source{Key: key, Device: "room-1", Log: quiet(),
		Want: func() string { mu.Lock(); defer mu.Unlock(); return want },
		Now:  func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
	}
	src.Publish = func(req []byte) error {
		r, pub, err := fleet.ParseTokenRequest(req, "room-1", src.Now())
		if err != nil {
			return err
		}
		resp, err := fleet.SealTokenGrant(pub, "room-1", r.Nonce, fleet.TokenGrant{Token: "tok-" + r.Consultation, Room: "r-" + r.Consultation,
			Consultation: r.Consultation, Expires: src.Now().Add(10 * time.Minute), E2EEKey: bytes.Clone(ks[r.Consultation])})
		if err != nil {
			return err
		}
		go src.OnToken(resp)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	cachedKey := func(id string) []byte {
		src.mu.Lock()
		defer src.mu.Unlock()
		if src.cached == nil {
			return nil
		}
		return src.cached[id].E2EEKey
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("not within 5 s: %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("c-1 prefetched", func() bool { return bytes.Equal(cachedKey("c-1"), ks["c-1"]) })
	held := cachedKey("c-1") // the cache's own bytes
	g, err := src.Grant(ctx)
	if err != nil || !bytes.Equal(g.E2EEKey, ks["c-1"]) {
		t.Fatalf("join's grant: %v", err)
	}
	taken := g.E2EEKey

	// The consultation is over: JOIN would now enter c-2.
	mu.Lock()
	want = "c-2"
	mu.Unlock()
	src.Kick()
	waitFor("c-2 prefetched and c-1 dropped", func() bool { return cachedKey("c-2") != nil && cachedKey("c-1") == nil })
	if !bytes.Equal(held, make([]byte, 32)) {
		t.Errorf("c-1's key material is still in the memory the cache held: %x", held)
	}
	if !bytes.Equal(taken, ks["c-1"]) {
		t.Error("the join's own copy of K was wiped under it")
	}

	// Nothing due any more, and c-2's grant has expired.
	mu.Lock()
	want, now = "", now.Add(11*time.Minute)
	mu.Unlock()
	held = cachedKey("c-2")
	src.Kick()
	waitFor("c-2 dropped", func() bool { return cachedKey("c-2") == nil })
	if !bytes.Equal(held, make([]byte, 32)) {
		t.Errorf("c-2's key material is still in memory: %x", held)
	}
}
