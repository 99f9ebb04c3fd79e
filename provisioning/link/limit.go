package link

import (
	"errors"
	"fmt"
	"net"
	"sync"
)

// MaxPacketSize bounds the remaining length of any MQTT packet the unit
// reads from its broker. paho allocates a packet's whole remaining length
// (MQTT allows 256 MiB) before anything can look at it, so a 200 MB
// retained config took roomd from 7.8 MB to 420 MB, and one re-delivered at
// every start could crash-loop it. The fleet envelope is capped at 1 MiB
// (fleet.MaxEnvelopeSize); a PUBLISH also carries its topic (well under
// 1 KiB in this tree) and a packet id, so 1 MiB + 4 KiB lets every envelope
// the unit would accept through and nothing much larger.
const MaxPacketSize = 1<<20 + 4<<10

// ErrPacketTooLarge is why the link drops a connection whose broker sent a
// packet over MaxPacketSize.
var ErrPacketTooLarge = errors.New("link: the broker sent an MQTT packet larger than the unit accepts")

// limitConn reads the MQTT stream from the broker as paho will, one fixed
// header at a time, and fails the read that would hand paho the length of
// an oversized packet: paho never allocates it, and the connection ends.
// The body of an accepted packet passes through unexamined.
type limitConn struct {
	net.Conn
	max int

	mu       sync.Mutex
	inHeader bool // between packets: the next byte is a fixed header's first
	lenBytes int  // remaining-length bytes read so far
	length   int  // remaining length decoded so far
	mult     int
	body     int   // body bytes still to pass
	err      error // sticky, once refused
}

func newLimitConn(c net.Conn, max int) *limitConn {
	return &limitConn{Conn: c, max: max, inHeader: true}
}

func (c *limitConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n, rerr := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := 0; i < n; i++ {
		if c.body > 0 {
			skip := min(c.body, n-i)
			c.body -= skip
			i += skip - 1
			continue
		}
		if c.inHeader {
			c.inHeader, c.lenBytes, c.length, c.mult = false, 0, 0, 1
			continue
		}
		b := int(p[i])
		c.length += (b & 0x7f) * c.mult
		c.mult *= 128
		c.lenBytes++
		if c.length > c.max || (b&0x80 != 0 && c.lenBytes == 4) {
			c.err = fmt.Errorf("%w: %d bytes or more, the limit is %d (is message_size_limit set on the broker?)", ErrPacketTooLarge, c.length, c.max)
			_ = c.Conn.Close()
			if i == 0 {
				return 0, c.err
			}
			// What came before this length byte is paho's; the error
			// comes with the next read.
			return i, nil
		}
		if b&0x80 == 0 {
			c.body = c.length
			c.inHeader = true
		}
	}
	return n, rerr
}

// LimitConn wraps c so that a packet from the broker whose remaining length
// is over max fails the read before paho allocates it, as the unit's own
// connection does (MaxPacketSize): the fleet manager's client faces the
// same brokers.
func LimitConn(c net.Conn, max int) net.Conn { return newLimitConn(c, max) }
