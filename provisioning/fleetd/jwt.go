package fleetd

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// A LiveKit access token is an HS256 JWT. livekit/protocol/auth mints them
// too, but pulls Prometheus and more into the fleet's tool; these few lines
// (the same claims media/livekit's JoinToken writes, which provisioning may
// not import) keep fleetd small.

// grant is the "video" claim. Publish, subscribe and data are written out
// even when false: LiveKit reads a missing canPublishData as allowed.
type grant struct {
	Room           string `json:"room"`
	RoomJoin       bool   `json:"roomJoin"`
	CanPublish     bool   `json:"canPublish"`
	CanSubscribe   bool   `json:"canSubscribe"`
	CanPublishData bool   `json:"canPublishData"`
}

// joinToken mints a token that lets identity join room and publish and
// subscribe there, and nothing else: no room list, create, admin or
// recording, no data messages, no metadata changes; valid for ttl (at most
// MaxTokenTTL) from 10 s ago (a little clock skew).
func joinToken(apiKey, apiSecret, identity, room string, now time.Time, ttl time.Duration) (string, time.Time, error) {
	if apiKey == "" || apiSecret == "" {
		return "", time.Time{}, errors.New("livekit token: API key and secret are both needed")
	}
	if ttl > MaxTokenTTL {
		ttl = MaxTokenTTL
	}
	exp := now.Add(ttl)
	claims := map[string]any{
		"iss":   apiKey,
		"sub":   identity,
		"name":  identity,
		"jti":   randomID(10),
		"nbf":   now.Add(-10 * time.Second).Unix(),
		"exp":   exp.Unix(),
		"video": grant{Room: room, RoomJoin: true, CanPublish: true, CanSubscribe: true},
	}
	enc := base64.RawURLEncoding
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("livekit token: %w", err)
	}
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(payload)
	mac := hmac.New(sha256.New, []byte(apiSecret))
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil)), exp, nil
}

// adminToken is fleetd's own short token to ask LiveKit who is in room
// (RoomService.ListParticipants needs roomAdmin for that room). It never
// leaves fleetd.
func adminToken(apiKey, apiSecret, room string, now time.Time) (string, error) {
	claims := map[string]any{
		"iss":   apiKey,
		"sub":   "fleetd",
		"nbf":   now.Add(-10 * time.Second).Unix(),
		"exp":   now.Add(time.Minute).Unix(),
		"video": map[string]any{"room": room, "roomAdmin": true},
	}
	enc := base64.RawURLEncoding
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("livekit admin token: %w", err)
	}
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(payload)
	mac := hmac.New(sha256.New, []byte(apiSecret))
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil)), nil
}
