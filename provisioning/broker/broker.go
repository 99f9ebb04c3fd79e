// Package broker is the zero-setup MQTT broker of the demo (make run): an
// embedded mochi-mqtt on loopback, plain TCP, so roomd and fleetctl on the
// same machine find a broker without installing or configuring one. It is
// not the fleet's broker: that is Mosquitto (or EMQX, HiveMQ) with TLS,
// client certificates and the ACL in deploy/mosquitto.
package broker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Broker is a running embedded broker.
type Broker struct {
	srv *mqtt.Server
	ln  *listeners.TCP
}

// Start serves MQTT on addr, which must be a loopback address
// ("127.0.0.1:0" picks a free port). Without TLS or client certificates
// there is nothing to tell a unit from anyone else, so the broker must not
// be reachable from the network: other hosts are refused at bind time and,
// should they get through anyway, at CONNECT.
func Start(addr string) (*Broker, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("broker: address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("broker: refusing to listen on %q: the embedded broker has no TLS or client certificates, so it binds loopback only", addr)
	}
	srv := mqtt.New(&mqtt.Options{
		// Connections and subscriptions at Info would drown roomd's own log.
		Logger: slog.New(minLevel{slog.Default().Handler(), slog.LevelWarn}),
	})
	if err := srv.AddHook(new(loopbackOnly), nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	// Last, so no later hook can drop a packet it holds the lock for.
	if err := srv.AddHook(&serialRetained{aliasMax: srv.Options.Capabilities.TopicAliasMaximum}, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	ln := listeners.NewTCP(listeners.Config{ID: "loopback", Address: addr})
	if err := srv.AddListener(ln); err != nil {
		return nil, fmt.Errorf("broker: listen on %s: %w", addr, err)
	}
	if err := srv.Serve(); err != nil {
		_ = srv.Close()
		return nil, fmt.Errorf("broker: %w", err)
	}
	return &Broker{srv: srv, ln: ln}, nil
}

// Addr is the host:port the broker listens on.
func (b *Broker) Addr() string { return b.ln.Address() }

// URL is the broker URL for link.Options.Broker and fleetctl.
func (b *Broker) URL() string { return "tcp://" + b.Addr() }

// Close disconnects every client and stops listening.
func (b *Broker) Close() error {
	if err := b.srv.Close(); err != nil {
		return fmt.Errorf("broker: close: %w", err)
	}
	return nil
}

// loopbackOnly admits clients connecting from this machine and lets them
// use every topic: on loopback the demo's unit and fleetctl are the only
// clients.
type loopbackOnly struct {
	mqtt.HookBase
}

func (h *loopbackOnly) ID() string { return "loopback-only" }

func (h *loopbackOnly) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *loopbackOnly) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	host, _, err := net.SplitHostPort(cl.Net.Remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (h *loopbackOnly) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// serialRetained works around a data race in mochi-mqtt v2.7.9 (the family
// of its issue #200): a wildcard SUBSCRIBE reads each topic's retain path
// while a retained PUBLISH, from another client's goroutine, writes it, with
// no lock between them. Units republish retained status all the time and
// fleetctl subscribes with wildcards, so the demo hit it. The hook runs the
// server's processing of client PUBLISH and SUBSCRIBE packets, and of wills,
// one at a time: it locks when such a packet has been read and unlocks once
// the server has processed it. Packets the server rejects before processing
// (it then skips OnPacketProcessed) are validated the same way here and never
// lock. Deliveries to subscribers are non-blocking sends in mochi, so nothing
// waits for another client while holding the lock.
type serialRetained struct {
	mqtt.HookBase
	aliasMax uint16
	mu       sync.Mutex
	held     sync.Map // *mqtt.Client → struct{}: its packet in process holds mu
}

func (h *serialRetained) ID() string { return "serial-retained" }

func (h *serialRetained) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPacketRead, mqtt.OnPacketProcessed, mqtt.OnWill, mqtt.OnWillSent}, []byte{b})
}

func (h *serialRetained) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if pk.PublishValidate(h.aliasMax) != packets.CodeSuccess {
			return pk, nil
		}
	case packets.Subscribe:
		if pk.SubscribeValidate() != packets.CodeSuccess {
			return pk, nil
		}
	default:
		return pk, nil
	}
	h.mu.Lock()
	h.held.Store(cl, struct{}{})
	return pk, nil
}

func (h *serialRetained) OnPacketProcessed(cl *mqtt.Client, _ packets.Packet, _ error) {
	if _, ok := h.held.LoadAndDelete(cl); ok {
		h.mu.Unlock()
	}
}

// A will is published by the server itself once its client is gone (its
// read loop has ended, so it holds no lock). Delayed wills (MQTT 5) return
// before OnWillSent: they are not locked.
func (h *serialRetained) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if will.WillDelayInterval == 0 {
		h.mu.Lock()
		h.held.Store(cl, struct{}{})
	}
	return will, nil
}

func (h *serialRetained) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	if _, ok := h.held.LoadAndDelete(cl); ok {
		h.mu.Unlock()
	}
}

// minLevel drops records below min.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(a), h.min}
}

func (h minLevel) WithGroup(g string) slog.Handler {
	return minLevel{h.Handler.WithGroup(g), h.min}
}
