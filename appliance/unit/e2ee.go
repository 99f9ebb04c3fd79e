package unit

import (
	"errors"
	"fmt"
	"sync"

	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/media/livekit"
)

// End-to-end encryption (invariant 10). A consultation from fleetd is
// always end to end encrypted: its key material K comes inside the sealed
// token grant, lives only in memory (the grant cache, the join's key), and
// a join without a usable key is refused, never sent in the clear. A
// stand-alone unit may take a key from conference.e2ee_key_file. K is never
// logged, reported or put in an error; only its safety code is shown.

// ErrNoE2EEKey refuses a consultation whose grant carries no key.
var ErrNoE2EEKey = errors.New("end-to-end encryption: fleetd sent no end-to-end key for this consultation, so the call is refused rather than sent without it")

// joinKey is one join's end-to-end key and its safety code; zero is a
// join without end-to-end encryption.
type joinKey struct {
	key  *e2ee.Key
	code string
}

// newJoinKey builds the key and the safety code from key material K.
func newJoinKey(material []byte) (joinKey, error) {
	k, err := e2ee.NewKey(material)
	if err != nil {
		// e2ee.NewKey's error names only the size, never the bytes.
		return joinKey{}, fmt.Errorf("end-to-end encryption: the key is unusable: %w", err)
	}
	return joinKey{key: k, code: e2ee.SafetyCode(material)}, nil
}

// e2eeParts is one opening's end-to-end keys: the stand-alone unit's file
// key, and the key of the join under way (what the connector asked for).
type e2eeParts struct {
	file joinKey                 // conference.e2ee_key_file, if set
	take func() (joinKey, error) // the fleet's key for this join; nil without fleetd

	mu  sync.Mutex
	cur joinKey
}

// source is the connector's E2EESource: asked right after the join's
// token, so the fleet's key is the one of that token's grant.
func (e *e2eeParts) source() (*e2ee.Key, error) {
	k := e.file
	if e.take != nil {
		var err error
		if k, err = e.take(); err != nil {
			return nil, err
		}
	}
	e.mu.Lock()
	e.cur = k
	e.mu.Unlock()
	return k.key, nil
}

func (e *e2eeParts) current() joinKey {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cur
}

// e2eeCall is a LiveKit call that tells the machine whether it is
// encrypted end to end, and its safety code (appliance.Encrypted).
type e2eeCall struct {
	*livekit.RTCCall
	code string
}

// E2EEDecryptFailures is how many far-end frames of the call did not
// decrypt (appliance.DecryptCounter).
func (c e2eeCall) E2EEDecryptFailures() uint64 {
	if p := c.Playout(); p != nil {
		return p.Stats().E2EEDecryptFailures
	}
	return 0
}

func (c e2eeCall) SafetyCode() string {
	if !c.E2EE() {
		return ""
	}
	return c.code
}
