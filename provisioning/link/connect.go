package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// dial opens the connection for paho. Doing it here rather than in paho
// means Close cancels a dial in progress, and no proxy environment variable
// can reroute the connection.
//
// The connection refuses packets over MaxPacketSize before paho reads them.
func (l *Link) dial(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.opts.ConnectTimeout)
	defer cancel()
	var c net.Conn
	var err error
	if l.tls == nil {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", l.host)
	} else {
		d := tls.Dialer{Config: l.tls}
		c, err = d.DialContext(ctx, "tcp", l.host)
	}
	if err != nil {
		return nil, err
	}
	return newLimitConn(c, MaxPacketSize), nil
}

func (l *Link) onLost(_ mqtt.Client, err error) {
	l.mu.Lock()
	l.gen++
	gen := l.gen
	l.mu.Unlock()
	l.log.Warn("fleet link lost", "broker", l.host, "err", err)
	l.setDown(gen, err)
}

func (l *Link) onNotify(_ mqtt.Client, n mqtt.ConnectionNotification) {
	switch n := n.(type) {
	case mqtt.ConnectionNotificationConnecting:
		if n.Attempt == 0 && !n.IsReconnect {
			return // boot: connect at once
		}
		select {
		case <-time.After(jitter(n.Attempt, l.opts.MinBackoff, l.opts.MaxBackoff)):
		case <-l.ctx.Done():
		}
	case mqtt.ConnectionNotificationFailed:
		reason := n.Reason
		if l.tls != nil && droppedAfterHandshake(reason) {
			if perr := l.probeTLS(); isTLSAlert(perr) {
				reason = fmt.Errorf("%w; the broker refused this unit's certificate: %w", reason, perr)
			}
		}
		l.mu.Lock()
		l.lastErr = reason
		closed := l.closed
		l.mu.Unlock()
		if !closed {
			l.log.Warn("fleet link: connection attempt failed", "broker", l.host, "err", reason)
			if l.opts.OnConnectError != nil {
				l.opts.OnConnectError(reason)
			}
		}
	}
}

// droppedAfterHandshake says the broker cut the connection rather than
// refusing it (a reset, a broken pipe, an early EOF).
func droppedAfterHandshake(err error) bool {
	if err == nil || isTLSAlert(err) {
		return false
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) {
		return true
	}
	// paho does not always wrap with %w.
	m := err.Error()
	return strings.Contains(m, "connection reset by peer") || strings.Contains(m, "broken pipe") || strings.HasSuffix(m, "EOF")
}

func isTLSAlert(err error) bool {
	return err != nil && strings.Contains(err.Error(), "remote error: tls:")
}

// probeTLS connects again and only reads. With TLS 1.3 the broker checks
// the unit's certificate after the handshake has finished on the unit's
// side; its refusal (an alert, then close) is lost when the unit has
// already written CONNECT and the close resets the socket, so a revoked
// unit saw only "connection reset" (and no fault) whenever it wrote first.
// A connection that writes nothing receives the alert. A broker that
// accepts the certificate waits for CONNECT: the read times out, nil.
func (l *Link) probeTLS() error {
	ctx, cancel := context.WithTimeout(l.ctx, l.opts.ConnectTimeout)
	defer cancel()
	d := tls.Dialer{Config: l.tls}
	c, err := d.DialContext(ctx, "tcp", l.host)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var b [1]byte
	_, err = c.Read(b[:])
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

func (l *Link) setUp(gen uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || gen != l.gen || l.up || !l.client.IsConnectionOpen() {
		return
	}
	l.up = true
	l.lastErr = nil
	close(l.upCh)
	l.notify(ConnState{Up: true, At: time.Now()})
}

func (l *Link) setDown(gen uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.lastErr = err
		if !l.closed && !l.up {
			l.log.Warn("fleet link not up", "err", err)
			// A try that failed before the link was up is news too: why
			// the unit cannot get on (a revoked certificate, a packet
			// over the limit) must reach States' reader, not only the log.
			if gen == l.gen {
				l.notify(ConnState{Up: false, At: time.Now(), Err: err})
			}
			return
		}
	}
	if l.closed || gen != l.gen || !l.up {
		return
	}
	l.up = false
	l.upCh = make(chan struct{})
	l.notify(ConnState{Up: false, At: time.Now(), Err: err})
}

// notify queues s, dropping the oldest change if nobody has been reading:
// the latest state is the one that matters. Called with l.mu held.
func (l *Link) notify(s ConnState) {
	for {
		select {
		case l.states <- s:
			return
		default:
		}
		select {
		case <-l.states:
		default:
		}
	}
}
