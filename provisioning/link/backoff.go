package link

import (
	"math/rand/v2"
	"time"
)

// jitter is the random extra wait before connection attempt n (0-based),
// uniform in [0, min(ceiling, base·2ⁿ)).
//
// Why on top of paho: paho's own waits are deterministic. After a lost
// connection it retries at once, then after 1 s, 2 s, 4 s … up to its
// MaxReconnectInterval; while first connecting it waits a fixed
// ConnectRetryInterval. When a broker restarts, every unit of the fleet loses
// it in the same instant and, without jitter, hits the new broker with its TLS
// handshakes in lockstep at each of those instants. The link adds this delay
// from paho's ConnectionNotificationConnecting callback, which paho calls
// synchronously before every attempt (first connect and reconnect alike), so
// one hook covers both loops without replacing paho's reconnect logic. The
// delay before attempt n therefore lies in [paho's wait, paho's wait + d(n)),
// d doubling like paho's wait: exponential backoff with jitter.
func jitter(attempt int, base, ceiling time.Duration) time.Duration {
	d := base
	for i := 0; i < attempt && d < ceiling; i++ {
		d *= 2
	}
	if d > ceiling {
		d = ceiling
	}
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}
