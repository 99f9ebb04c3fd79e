package main

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/konsult/konsult/media/livekit"
)

//go:embed page.html
var page []byte

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("patient", flag.ContinueOnError)
	fs.SetOutput(stderr)
	lkURL := fs.String("livekit", "http://127.0.0.1:7880", "LiveKit server")
	room := fs.String("room", "konsult-demo", "room to join")
	key := fs.String("api-key", "", "LiveKit API key (or $LIVEKIT_API_KEY)")
	secret := fs.String("api-secret", "", "LiveKit API secret (or $LIVEKIT_API_SECRET)")
	clientJS := fs.String("client-js", ".cache/npm/node_modules/livekit-client/dist/livekit-client.umd.js", "livekit-client UMD bundle")
	listen := fs.String("listen", "127.0.0.1:8790", "where to serve the page (loopback)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *key == "" {
		*key = os.Getenv("LIVEKIT_API_KEY")
	}
	if *secret == "" {
		*secret = os.Getenv("LIVEKIT_API_SECRET")
	}
	if *key == "" || *secret == "" {
		return errors.New("need --api-key and --api-secret (or LIVEKIT_API_KEY / LIVEKIT_API_SECRET)")
	}
	js, err := os.ReadFile(*clientJS)
	if err != nil {
		return fmt.Errorf("livekit-client bundle: %w (run `make setup`, or pass --client-js)", err)
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		return fmt.Errorf("--listen %q must be a loopback address such as 127.0.0.1:8790", *listen)
	}
	wsURL := "ws" + strings.TrimPrefix(*lkURL, "http")

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	mux.HandleFunc("GET /livekit-client.umd.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript")
		_, _ = w.Write(js)
	})
	mux.HandleFunc("GET /join", func(w http.ResponseWriter, r *http.Request) {
		var b [3]byte
		_, _ = rand.Read(b[:])
		identity := "patient-" + hex.EncodeToString(b[:])
		tok, err := livekit.JoinToken(*key, *secret, identity, *room, time.Hour)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"url": wsURL, "token": tok, "room": *room, "identity": identity})
	})
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	fmt.Fprintf(stdout, "patient page: http://%s/  (open it, press \"Join as the patient\", then `go run ./cmd/roomctl press join`)\n", l.Addr())
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
