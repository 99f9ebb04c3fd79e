package fleet

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// The token exchange: a unit asks the fleet service (fleetd) for a
// conference token on its own topic, and gets it back sealed to its own
// certificate key, so the broker (and anyone reading the topic) sees only
// ciphertext. The unit signs its request with the same key: a request for
// unit A is only ever answered to the holder of A's key, whatever the
// broker's ACL lets through.

// DomainTokenRequest separates a unit's token request signature from every
// other use of its key (TLS, CSRs).
const DomainTokenRequest = "konsult-token-request-v1\n"

// tokenInfo is HPKE's info string: it binds the sealed grant to the unit
// and the request it answers, so a grant cannot be replayed to another
// request even by the broker.
const tokenInfo = "konsult-token-v1\n"

// MaxTokenMessage bounds a token request or response on the wire.
const MaxTokenMessage = 16 << 10

// TokenRequestSkew is how far a request's time may be from fleetd's clock.
const TokenRequestSkew = 5 * time.Minute

// StandingMeeting is the consultation id a unit asks for when it enters its
// room's standing meeting instead of a booked consultation.
const StandingMeeting = "standing"

// TokenRequest is what a unit asks for. It names what the unit wants to
// enter, a consultation id of its own schedule or StandingMeeting, never a
// room: fleetd picks the room.
type TokenRequest struct {
	Device       string    `json:"device"`
	Consultation string    `json:"consultation"`
	Nonce        string    `json:"nonce"`
	At           time.Time `json:"at"`
}

// wireTokenRequest is the signed request: the request's JSON, the unit's
// public key (PKIX DER, whose fingerprint is the device id) and an ECDSA
// signature over DomainTokenRequest+request.
type wireTokenRequest struct {
	Request []byte `json:"request"`
	Key     []byte `json:"key"`
	Sig     []byte `json:"sig"`
}

// SignTokenRequest signs r with the unit's key.
func SignTokenRequest(key crypto.Signer, r TokenRequest) ([]byte, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("token request: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("token request: unit key: %w", err)
	}
	sum := sha256.Sum256(append([]byte(DomainTokenRequest), body...))
	sig, err := key.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("token request: sign: %w", err)
	}
	return json.Marshal(wireTokenRequest{Request: body, Key: der, Sig: sig})
}

// ParseTokenRequest checks a request that arrived on device's token topic:
// for device, signed by the key it carries, and made within
// TokenRequestSkew of now. It returns the request and that key, the one to
// seal the answer to. Whether the key is one the fleet CA issued device a
// certificate for, not revoked, is the caller's check (the CA's ledger).
func ParseTokenRequest(b []byte, device string, now time.Time) (TokenRequest, *ecdsa.PublicKey, error) {
	var r TokenRequest
	if len(b) > MaxTokenMessage {
		return r, nil, fmt.Errorf("token request of %d bytes, over %d", len(b), MaxTokenMessage)
	}
	var w wireTokenRequest
	if err := json.Unmarshal(b, &w); err != nil {
		return r, nil, fmt.Errorf("token request: %w", err)
	}
	pub, err := x509.ParsePKIXPublicKey(w.Key)
	if err != nil {
		return r, nil, fmt.Errorf("token request: key: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return r, nil, fmt.Errorf("token request: key is a %T, not ECDSA", pub)
	}
	sum := sha256.Sum256(append([]byte(DomainTokenRequest), w.Request...))
	if !ecdsa.VerifyASN1(ec, sum[:], w.Sig) {
		return r, nil, errors.New("token request: bad signature")
	}
	if err := json.Unmarshal(w.Request, &r); err != nil {
		return r, nil, fmt.Errorf("token request: %w", err)
	}
	if r.Device != device {
		return r, nil, fmt.Errorf("token request for %q on %s's topic", r.Device, device)
	}
	if !validNonce(r.Nonce) {
		return r, nil, errors.New("token request: bad nonce")
	}
	if r.Consultation == "" || len(r.Consultation) > 64 {
		return r, nil, errors.New("token request: no consultation named")
	}
	if d := now.Sub(r.At); d > TokenRequestSkew || d < -TokenRequestSkew {
		return r, nil, fmt.Errorf("token request made at %s, %s from fleetd's clock: check the unit's time sync (NTP)", r.At.UTC().Format(time.RFC3339), d.Round(time.Second))
	}
	return r, ec, nil
}

// TokenGrant is fleetd's answer, sealed: the conference token and what it
// is for. Room is the conference room; the unit needs it only for its
// status, the token itself names it.
type TokenGrant struct {
	Token        string    `json:"token"`
	Room         string    `json:"room"`
	Consultation string    `json:"consultation"`
	Expires      time.Time `json:"expires"`
	// E2EEKey is the consultation's end-to-end key material K (32 bytes,
	// /work/shared E2EE contract), present for an end-to-end encrypted
	// consultation. It travels only inside the sealed grant; never log it.
	E2EEKey []byte `json:"e2ee_key,omitempty"`
}

// TokenResponse is the message on a unit's token topic: the nonce it
// answers, and either the sealed grant or why there is none (in clear: it
// names no secret).
type TokenResponse struct {
	Nonce  string `json:"nonce"`
	Sealed []byte `json:"sealed,omitempty"` // HPKE enc || ciphertext
	Error  string `json:"error,omitempty"`
}

func hpkeSuite() (hpke.KDF, hpke.AEAD) { return hpke.HKDFSHA256(), hpke.AES128GCM() }

func tokenInfoFor(device, nonce string) []byte {
	return []byte(tokenInfo + device + "\n" + nonce)
}

// SealTokenGrant seals g to the unit's key (DHKEM(P-256), HKDF-SHA256,
// AES-128-GCM), bound to device and the request's nonce.
func SealTokenGrant(pub *ecdsa.PublicKey, device, nonce string, g TokenGrant) ([]byte, error) {
	ek, err := pub.ECDH()
	if err != nil {
		return nil, fmt.Errorf("seal token: %w", err)
	}
	pk, err := hpke.NewDHKEMPublicKey(ek)
	if err != nil {
		return nil, fmt.Errorf("seal token: %w", err)
	}
	body, err := json.Marshal(g)
	if err != nil {
		return nil, fmt.Errorf("seal token: %w", err)
	}
	kdf, aead := hpkeSuite()
	ct, err := hpke.Seal(pk, kdf, aead, tokenInfoFor(device, nonce), body)
	if err != nil {
		return nil, fmt.Errorf("seal token: %w", err)
	}
	return json.Marshal(TokenResponse{Nonce: nonce, Sealed: ct})
}

// RefuseToken is the answer that carries no token.
func RefuseToken(nonce, reason string) []byte {
	b, _ := json.Marshal(TokenResponse{Nonce: nonce, Error: reason})
	return b
}

// ParseTokenResponse reads a response without opening it.
func ParseTokenResponse(b []byte) (TokenResponse, error) {
	var r TokenResponse
	if len(b) > MaxTokenMessage {
		return r, fmt.Errorf("token response of %d bytes, over %d", len(b), MaxTokenMessage)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("token response: %w", err)
	}
	return r, nil
}

// ErrTokenRefused wraps fleetd's reason for not issuing a token.
var ErrTokenRefused = errors.New("fleetd refused a token")

// OpenTokenGrant opens the grant in r with the unit's key. The key must be
// an ECDSA key whose private half is in memory (identity's file key); a
// key in hardware would need its own ECDH.
func OpenTokenGrant(key crypto.Signer, device string, r TokenResponse) (TokenGrant, error) {
	var g TokenGrant
	if r.Error != "" {
		return g, fmt.Errorf("%w: %s", ErrTokenRefused, r.Error)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return g, fmt.Errorf("open token: the unit key is a %T, which cannot do ECDH here", key)
	}
	ek, err := ec.ECDH()
	if err != nil {
		return g, fmt.Errorf("open token: %w", err)
	}
	return openWith(ek, device, r, &g)
}

func openWith(ek *ecdh.PrivateKey, device string, r TokenResponse, g *TokenGrant) (TokenGrant, error) {
	sk, err := hpke.NewDHKEMPrivateKey(ek)
	if err != nil {
		return *g, fmt.Errorf("open token: %w", err)
	}
	kdf, aead := hpkeSuite()
	body, err := hpke.Open(sk, kdf, aead, tokenInfoFor(device, r.Nonce), r.Sealed)
	if err != nil {
		return *g, fmt.Errorf("open token: %w", err)
	}
	if err := json.Unmarshal(body, g); err != nil {
		return *g, fmt.Errorf("open token: %w", err)
	}
	return *g, nil
}
