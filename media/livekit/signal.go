package livekit

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	lkp "github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/proto"

	"github.com/konsult/konsult/media/internal/snippet"
)

// maxBodySnippet bounds how much of a refusing server's body a fault
// reason quotes.
const maxBodySnippet = 200

// signal is one WebSocket to LiveKit's /rtc/v1: protobuf SignalRequests out,
// SignalResponses in. A resume opens a new one; the call outlives it.
type signal struct {
	ws   *websocket.Conn
	wmu  sync.Mutex
	done chan struct{} // closed when the read loop ends
	err  error         // why it ended, valid after done
}

// ErrRejected: the server refused the join (token, room, permissions).
var ErrRejected = errors.New("the conference server refused the join")

// dialSignal opens /rtc/v1 with the join request in the URL. The token goes
// in the Authorization header, never in the URL, so no proxy or server log
// that records URLs can record it.
func dialSignal(ctx context.Context, base string, token string, jr *lkp.JoinRequest, d *websocket.Dialer) (*signal, *lkp.SignalResponse, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, nil, errors.New("conference url is not a URL")
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/rtc/v1"
	inner, err := proto.Marshal(jr)
	if err != nil {
		return nil, nil, fmt.Errorf("encode join request: %w", err)
	}
	wrapped, err := proto.Marshal(&lkp.WrappedJoinRequest{Compression: lkp.WrappedJoinRequest_NONE, JoinRequest: inner})
	if err != nil {
		return nil, nil, fmt.Errorf("encode join request: %w", err)
	}
	q := url.Values{}
	q.Set("join_request", base64.URLEncoding.EncodeToString(wrapped))
	u.RawQuery = q.Encode()
	h := http.Header{}
	h.Set("Authorization", "Bearer "+token)
	ws, resp, err := d.DialContext(ctx, u.String(), h)
	if err != nil {
		host := u.Host
		if resp != nil {
			defer resp.Body.Close()
			// The body is the server's text: printable, short, without
			// the token, or it could forge log lines and fault reasons.
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			msg := snippet.Clean(body, maxBodySnippet, token)
			status := snippet.Clean([]byte(resp.Status), 64, token) // the reason phrase is the server's too
			switch resp.StatusCode {
			case http.StatusUnauthorized, http.StatusForbidden:
				return nil, nil, fmt.Errorf("%w: %s (%s): check api_key/api_secret or the token", ErrRejected, status, msg)
			}
			return nil, nil, fmt.Errorf("%w: %s from %s (%s)", ErrRejected, status, host, msg)
		}
		// The dialer's errors carry the URL, and with it the join request:
		// say what failed without it.
		var ne interface{ Timeout() bool }
		switch {
		case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
			return nil, nil, fmt.Errorf("no answer from %s: check the server address and the network", host)
		default:
			return nil, nil, fmt.Errorf("cannot reach the conference server %s: %v: check the url and that the server runs", host, scrubURL(err, u))
		}
	}
	// gorilla checks the limit against each frame's declared length
	// before reading it: an oversized message costs nothing.
	ws.SetReadLimit(MaxSignalMessage)
	s := &signal{ws: ws, done: make(chan struct{})}
	// The first message is the join (or reconnect) response, or a leave.
	if dl, ok := ctx.Deadline(); ok {
		_ = ws.SetReadDeadline(dl)
	} else {
		_ = ws.SetReadDeadline(time.Now().Add(15 * time.Second))
	}
	first, err := s.read()
	if err != nil {
		ws.Close()
		return nil, nil, fmt.Errorf("waiting for the join response: %w", err)
	}
	_ = ws.SetReadDeadline(time.Time{})
	return s, first, nil
}

func scrubURL(err error, u *url.URL) string {
	msg := err.Error()
	msg = strings.ReplaceAll(msg, u.String(), u.Scheme+"://"+u.Host+u.Path)
	if i := strings.Index(msg, "join_request="); i >= 0 {
		msg = msg[:i] + "join_request=…"
	}
	return msg
}

func (s *signal) read() (*lkp.SignalResponse, error) {
	for {
		mt, b, err := s.ws.ReadMessage()
		if errors.Is(err, websocket.ErrReadLimit) {
			return nil, ErrMessageTooBig
		}
		if err != nil {
			return nil, err
		}
		if mt != websocket.BinaryMessage {
			continue
		}
		var r lkp.SignalResponse
		if err := proto.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("undecodable signal message: %w", err)
		}
		return &r, nil
	}
}

// loop hands every message to handle until the socket ends.
func (s *signal) loop(handle func(*lkp.SignalResponse)) {
	defer close(s.done)
	for {
		r, err := s.read()
		if err != nil {
			s.err = err
			return
		}
		handle(r)
	}
}

func (s *signal) send(req *lkp.SignalRequest) error {
	b, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return s.ws.WriteMessage(websocket.BinaryMessage, b)
}

func (s *signal) close() { _ = s.ws.Close() }
