package whip_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/konsult/konsult/media/whip"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
)

// Publish a camera track to LiveKit's WHIP endpoint and leave again.
func ExampleClient_Publish() {
	ctx := context.Background()
	client, err := whip.New(whip.Config{
		Endpoint:     "https://livekit.clinic.example/whip/v1",
		Token:        "<LiveKit access token>",
		AllowedHosts: []string{"livekit.clinic.example"},
		ICEServers:   []webrtc.ICEServer{{URLs: []string{"stun:stun.clinic.example:3478"}}},
		Logger:       slog.Default(),
	})
	if err != nil {
		log.Fatal(err) // e.g. whip.ErrInsecureScheme, whip.ErrHostNotAllowed
	}

	// ICE servers known before the offer: configured ones plus any the
	// server announces on OPTIONS (errors here are not fatal).
	servers, _ := client.Preflight(ctx)
	pc, err := webrtc.NewPeerConnection(webrtc.Configuration{
		ICEServers:   servers,
		BundlePolicy: webrtc.BundlePolicyMaxBundle, // RFC 9725: one BUNDLE group for all m-lines
	})
	if err != nil {
		log.Fatal(err)
	}
	defer pc.Close()

	video, _ := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8}, "video", "room-unit")
	sender, _ := pc.AddTrack(video)
	go func() { // drain RTCP so interceptors work
		buf := make([]byte, 1500)
		for {
			if _, _, err := sender.Read(buf); err != nil {
				return
			}
		}
	}()

	pubCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	sess, err := client.Publish(pubCtx, pc)
	switch {
	case errors.Is(err, whip.ErrTokenRejected):
		log.Fatal("the room token expired; ask for a new one")
	case err != nil:
		log.Fatal(err)
	}
	if err := sess.WaitConnected(pubCtx); err != nil {
		// The session was already DELETEd. With ErrICEFailed, a new
		// PeerConnection built with client.ICEServers() also uses the
		// TURN servers the server announced in its Link headers.
		log.Fatal(err)
	}

	_ = video.WriteSample(media.Sample{Data: []byte{ /* VP8 frame */ }, Duration: time.Second / 30})

	// Leave.
	delCtx, cancelDel := context.WithTimeout(ctx, 5*time.Second)
	defer cancelDel()
	if err := sess.Delete(delCtx); err != nil {
		log.Print(err)
	}
}

// Telling the user what went wrong.
func ExampleHTTPError() {
	var (
		client *whip.Client           // from whip.New
		pc     *webrtc.PeerConnection // with tracks added
	)
	_, err := client.Publish(context.Background(), pc)
	var he *whip.HTTPError
	switch {
	case err == nil:
	case errors.Is(err, whip.ErrTokenRejected):
		fmt.Println("The room token was rejected (expired or wrong key).")
	case errors.Is(err, whip.ErrForbidden):
		fmt.Println("This unit may not publish in this room.")
	case errors.Is(err, whip.ErrBusy) && errors.As(err, &he):
		fmt.Println("Server busy; retry after", he.RetryAfter)
	case errors.Is(err, whip.ErrNoAnswer), errors.Is(err, whip.ErrUnreachable):
		fmt.Println("No answer from the video server; check the network.")
	case errors.Is(err, whip.ErrCertificate):
		fmt.Println("The server's certificate is not trusted:", err)
	default:
		fmt.Println(err)
	}
}

// Send candidates gathered late, and restart ICE after a network change.
func ExampleSession_RestartICE() {
	var (
		ctx  = context.Background()
		pc   *webrtc.PeerConnection // the published PeerConnection
		sess *whip.Session          // from Client.Publish
	)
	pc.OnICECandidate(func(c *webrtc.ICECandidate) {
		init := webrtc.ICECandidateInit{} // nil c: end of candidates
		if c != nil {
			init = c.ToJSON()
		}
		if err := sess.Trickle(ctx, init); errors.Is(err, whip.ErrNotSupported) {
			return // server does not take trickle; the offer already had all candidates
		}
	})
	if err := sess.RestartICE(ctx); errors.Is(err, whip.ErrNotSupported) {
		// Server cannot restart ICE: publish again on a new PeerConnection.
		_ = sess.Delete(ctx)
	}
}

// Leave the room.
func ExampleSession_Delete() {
	var sess *whip.Session // from Client.Publish
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sess.Delete(ctx); err != nil {
		log.Print(err)
	}
}
