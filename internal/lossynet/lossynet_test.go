package lossynet_test

import (
	"net"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/lossynet"
)

// udpLoss sends n datagrams over loopback and returns the share lost.
func udpLoss(t *testing.T, n int) float64 {
	t.Helper()
	rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	tx, err := net.DialUDP("udp", nil, rx.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	got := make(chan int)
	go func() {
		buf := make([]byte, 64)
		k := 0
		for {
			_ = rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := rx.Read(buf); err != nil {
				got <- k
				return
			}
			k++
		}
	}()
	for i := range n {
		_, _ = tx.Write([]byte("x")) // a dropped datagram may report EPERM: that is the loss
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // never overflow the receive buffer
		}
	}
	return 1 - float64(<-got)/float64(n)
}

// The namespace's loopback loses what it is told to, and nothing outside it
// is touched: the loss, a total cut, and its end are what a datagram sees.
func TestLossyLoopback(t *testing.T) {
	lossynet.Run(t, 5, func(t *testing.T, n *lossynet.Net) {
		if l := udpLoss(t, 4000); l < 0.03 || l > 0.07 {
			t.Fatalf("at 5 %% loss, %.1f %% of datagrams were lost", 100*l)
		}
		restore := n.Cut()
		if l := udpLoss(t, 200); l != 1 {
			t.Fatalf("during a cut, %.1f %% of datagrams were lost, want all", 100*l)
		}
		restore()
		n.Loss(0)
		if l := udpLoss(t, 1000); l != 0 {
			t.Fatalf("at 0 %% loss, %.1f %% of datagrams were lost", 100*l)
		}
	})
}
