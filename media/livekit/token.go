// Package livekit connects the room unit to a LiveKit server.
//
// This file mints LiveKit access tokens (JWT, HS256) from an API key and
// secret, so a unit configured with a key pair never keeps a long-lived
// token: each join gets a fresh one that expires soon after.
package livekit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// VideoGrant is the "video" claim of a LiveKit access token.
type VideoGrant struct {
	Room           string `json:"room,omitempty"`
	RoomJoin       bool   `json:"roomJoin,omitempty"`
	RoomList       bool   `json:"roomList,omitempty"`
	RoomAdmin      bool   `json:"roomAdmin,omitempty"`
	RoomCreate     bool   `json:"roomCreate,omitempty"`
	CanPublish     *bool  `json:"canPublish,omitempty"`
	CanSubscribe   *bool  `json:"canSubscribe,omitempty"`
	CanPublishData *bool  `json:"canPublishData,omitempty"`
}

// SignToken makes an HS256 access token for identity with grant, valid for
// ttl (and from 10 s ago, to forgive a little clock skew).
func SignToken(apiKey, apiSecret, identity string, grant VideoGrant, ttl time.Duration) (string, error) {
	if apiKey == "" || apiSecret == "" {
		return "", errors.New("livekit token: API key and secret are both needed")
	}
	now := time.Now()
	claims := map[string]any{
		"iss":   apiKey,
		"nbf":   now.Add(-10 * time.Second).Unix(),
		"exp":   now.Add(ttl).Unix(),
		"video": grant,
	}
	if identity != "" {
		claims["sub"] = identity
		claims["name"] = identity
	}
	return signHS256(apiSecret, claims)
}

func signHS256(secret string, claims any) (string, error) {
	enc := base64.RawURLEncoding
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("livekit token: %w", err)
	}
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(payload)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil)), nil
}

// JoinToken is a token to join room as identity, publishing and subscribing.
func JoinToken(apiKey, apiSecret, identity, room string, ttl time.Duration) (string, error) {
	yes := true
	return SignToken(apiKey, apiSecret, identity, VideoGrant{
		Room: room, RoomJoin: true, CanPublish: &yes, CanSubscribe: &yes, CanPublishData: &yes,
	}, ttl)
}
