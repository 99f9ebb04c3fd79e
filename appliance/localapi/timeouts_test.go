package localapi

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
)

// closedWithin reports whether the server closes c within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if err == nil {
		return true // EOF: the server closed it
	}
	if ok := asNetErr(err, &ne); ok && ne.Timeout() {
		return false
	}
	return true // reset: closed too
}

func asNetErr(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}

// A client that trickles its headers or body, or keeps an idle connection,
// must not hold a connection for ever; an event stream must still last as
// long as its reader wants. So: ReadHeaderTimeout, IdleTimeout and a body
// deadline, but no ReadTimeout or WriteTimeout.
func TestTimeoutsCutSlowClientsButNotEventStreams(t *testing.T) {
	u := &fakeUnit{}
	log, _ := newLogRecorder()
	srv := NewServer(u, log)
	const limit = 300 * time.Millisecond
	srv.readHeaderTimeout, srv.idleTimeout, srv.bodyTimeout = limit, limit, limit
	l, err := ListenLoopback("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	addr := l.Addr().String()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	// An event stream, opened first, must outlive all of the limits below.
	ev := dial()
	fmt.Fprintf(ev, "GET /v1/events HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	evr := bufio.NewReader(ev)

	slowHeader := dial()
	fmt.Fprintf(slowHeader, "GET /v1/status HTTP/1.1\r\nHost: %s\r\n", addr) // no blank line: headers never end
	if !closedWithin(slowHeader, 10*limit) {
		t.Error("a client that never finished its headers kept its connection")
	}

	slowBody := dial()
	fmt.Fprintf(slowBody, "POST /v1/action HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"action\":", addr)
	_ = slowBody.SetReadDeadline(time.Now().Add(10 * limit))
	line, err := bufio.NewReader(slowBody).ReadString('\n')
	if err != nil || !strings.Contains(line, "400") {
		t.Errorf("a body that never arrived: %q, %v; want a 400 within %v", line, err, 10*limit)
	}

	// A refused body (not JSON) is not waited for either.
	slowRefused := dial()
	fmt.Fprintf(slowRefused, "POST /v1/action HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\r\n{\"action\":", addr)
	_ = slowRefused.SetReadDeadline(time.Now().Add(10 * limit))
	line, err = bufio.NewReader(slowRefused).ReadString('\n')
	if err != nil || !strings.Contains(line, "415") {
		t.Errorf("a refused body that never arrived: %q, %v; want a 415 within %v", line, err, 10*limit)
	}
	if !closedWithin(slowRefused, 10*limit) {
		t.Error("a refused body that never arrived kept its connection")
	}

	idle := dial()
	fmt.Fprintf(idle, "GET /v1/status HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	ir := bufio.NewReader(idle)
	if line, _ := ir.ReadString('\n'); !strings.Contains(line, "200") {
		t.Fatalf("status: %q", line)
	}
	if !closedWithin(idle, 10*limit) {
		t.Error("an idle kept-alive connection was never closed")
	}

	time.Sleep(2 * limit)
	u.Publish(appliance.Event{Type: "state", Detail: "still-streaming"})
	_ = ev.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		line, err := evr.ReadString('\n')
		if err != nil {
			t.Fatalf("the event stream ended after the timeouts: %v", err)
		}
		if strings.Contains(line, "still-streaming") {
			break
		}
	}
	if u.Streams() != 1 {
		t.Fatalf("%d event streams open, want 1", u.Streams())
	}
}

// Shutdown ends event streams rather than waiting for their readers.
func TestShutdownEndsEventStreams(t *testing.T) {
	u := &fakeUnit{}
	log, _ := newLogRecorder()
	srv := NewServer(u, log)
	l, err := ListenLoopback("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	c := Dial("http://" + l.Addr().String())
	ended := make(chan error, 1)
	go func() {
		ended <- c.Events(context.Background(), func(appliance.Event) bool { return true })
	}()
	deadline := time.Now().Add(5 * time.Second)
	for u.Streams() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("shutdown waited %v for an event stream", took)
	}
	select {
	case <-ended:
	case <-time.After(2 * time.Second):
		t.Fatal("the event stream was still open after shutdown")
	}
}

// Serve gives the whole API only to a unix socket; a TCP listener that is
// not on loopback is refused outright.
func TestServeRefusesANonLoopbackListener(t *testing.T) {
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	log, _ := newLogRecorder()
	if err := NewServer(&fakeUnit{}, log).Serve(l); err == nil || !strings.Contains(err.Error(), "not a loopback") {
		t.Fatalf("Serve on %s: %v", l.Addr(), err)
	}
}
