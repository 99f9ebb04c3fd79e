package livekit

import (
	"time"

	lkp "github.com/livekit/protocol/livekit"
)

func (c *RTCCall) setPing(every, timeout int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pingEvery, c.pingTimeout = time.Duration(every)*time.Second, time.Duration(timeout)*time.Second
	if c.pingEvery <= 0 {
		c.pingEvery = 5 * time.Second
	}
	if c.pingTimeout <= 0 {
		c.pingTimeout = 15 * time.Second
	}
	c.lastPong = time.Now()
}

// pinger keeps the signalling alive as the server asks (it drops a client
// that stays silent past its ping timeout), and treats a server that stops
// answering as a lost connection.
func (c *RTCCall) pinger() {
	for {
		c.mu.Lock()
		every, timeout, last, sig := c.pingEvery, c.pingTimeout, c.lastPong, c.sig
		c.mu.Unlock()
		select {
		case <-c.over:
			return
		case <-time.After(every):
		}
		if sig == nil {
			continue
		}
		if time.Since(last) > timeout+every {
			c.log.Warn("signalling: no pong from the server; reconnecting")
			sig.close()
			continue
		}
		now := time.Now().UnixMilli()
		_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_PingReq{PingReq: &lkp.Ping{Timestamp: now}}})
		_ = sig.send(&lkp.SignalRequest{Message: &lkp.SignalRequest_Ping{Ping: now}})
	}
}
