package link

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// chunkConn serves data in reads of at most n bytes.
type chunkConn struct {
	net.Conn
	r *bytes.Reader
	n int
}

func (c *chunkConn) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }
func (c *chunkConn) Close() error               { return nil }

func packet(first byte, body int) []byte {
	var b bytes.Buffer
	b.WriteByte(first)
	n := body
	for {
		d := byte(n % 128)
		if n /= 128; n > 0 {
			d |= 0x80
		}
		b.WriteByte(d)
		if n == 0 {
			break
		}
	}
	b.Write(make([]byte, body))
	return b.Bytes()
}

// The limiter must follow packet boundaries whatever the read sizes, pass
// every packet up to the limit intact, and refuse the first one over it.
func TestLimitConnFollowsPacketsAcrossReads(t *testing.T) {
	const max = 300
	var ok bytes.Buffer
	for _, p := range [][]byte{packet(0xd0, 0), packet(0x30, 5), packet(0x30, 127), packet(0x30, 128), packet(0x32, max), packet(0x90, 3)} {
		ok.Write(p)
	}
	for n := 1; n <= 9; n++ {
		in := append(bytes.Clone(ok.Bytes()), packet(0x30, max+1)...)
		lc := newLimitConn(&chunkConn{r: bytes.NewReader(in), n: n}, max)
		got, err := io.ReadAll(lc)
		if !errors.Is(err, ErrPacketTooLarge) {
			t.Fatalf("reads of %d: err = %v, want ErrPacketTooLarge", n, err)
		}
		if !bytes.HasPrefix(got, ok.Bytes()) || len(got) > ok.Len()+2 {
			t.Fatalf("reads of %d: passed %d bytes, want the %d of the packets within the limit", n, len(got), ok.Len())
		}
	}
	// A length with a fifth byte is no MQTT at all.
	lc := newLimitConn(&chunkConn{r: bytes.NewReader([]byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}), n: 1}, 1<<30)
	if _, err := io.ReadAll(lc); !errors.Is(err, ErrPacketTooLarge) {
		t.Errorf("malformed length: err = %v", err)
	}
}
