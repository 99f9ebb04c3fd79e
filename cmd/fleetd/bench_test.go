package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/fleetd"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// BenchmarkFleetd1000Units runs the fleetd binary for a fleet of 1,000
// connected units (real Mosquitto), each with a booked consultation and
// its schedule published, and has every unit ask for its token at once.
// It reports the requests answered per second and fleetd's resident
// memory once all are answered.
func BenchmarkFleetd1000Units(b *testing.B) {
	const n = 1000
	dir := b.TempDir()
	c, err := ca.Init(filepath.Join(dir, "ca"), "")
	if err != nil {
		b.Fatal(err)
	}
	if _, _, _, err := manager.GenerateKeys(c.Dir, false); err != nil {
		b.Fatal(err)
	}
	units := map[string][]string{}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("room-%04d", i)
		units[names[i]] = nil
	}
	br := brokertest.Start(b, brokertest.Options{Units: units, CA: c})
	cert, key, err := c.IssueWithKey(ca.KindAdmin, "fleetd", nil, filepath.Join(dir, "fleetd"))
	if err != nil {
		b.Fatal(err)
	}
	db := filepath.Join(dir, "fleetd.db")
	conf := fmt.Sprintf("database = %q\nca_dir = %q\nsocket = %q\n[broker]\nurl = %q\nca = %q\ncert = %q\ncert_key = %q\n[livekit]\napi_key = \"k\"\napi_secret = \"s\"\n",
		db, c.Dir, filepath.Join(dir, "fleetd.sock"), br.SharedURL(), br.CAFile(), cert, key)
	cfgPath := filepath.Join(dir, "fleetd.toml")
	os.WriteFile(cfgPath, []byte(conf), 0o600)
	// The bookings, written before fleetd starts (as after a restart).
	st, err := fleetd.OpenStore(db)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	ids := map[string]string{}
	for _, u := range names {
		cs, _, err := st.AddConsultation(context.Background(), u, now, now.Add(time.Hour), "", now)
		if err != nil {
			b.Fatal(err)
		}
		ids[u] = cs.ID
	}
	st.Close()
	bin := filepath.Join(dir, "fleetd-bin")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build fleetd: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "--config", cfgPath)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	topics := link.Topics{}
	type unit struct {
		key *ecdsa.PrivateKey
		c   mqtt.Client
	}
	us := make([]unit, n)
	answers := make(chan struct{}, n)
	for i, name := range names {
		kb, _ := os.ReadFile(br.Identity(name).KeyFile)
		blk, _ := pem.Decode(kb)
		k, _ := x509.ParsePKCS8PrivateKey(blk.Bytes)
		us[i] = unit{key: k.(*ecdsa.PrivateKey), c: br.UnitClient(b, name)}
		us[i].c.Subscribe(topics.Token(name), 1, func(_ mqtt.Client, m mqtt.Message) {
			if r, err := fleet.ParseTokenResponse(m.Payload()); err == nil && len(r.Sealed) > 0 {
				answers <- struct{}{}
			}
		}).Wait()
	}
	time.Sleep(2 * time.Second) // fleetd connected and subscribed
	b.ResetTimer()
	var total time.Duration
	for b.Loop() {
		start := time.Now()
		var wg sync.WaitGroup
		for i, name := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := fleet.SignTokenRequest(us[i].key, fleet.TokenRequest{Device: name, Consultation: ids[name], Nonce: fleet.NewNonce(), At: time.Now()})
				us[i].c.Publish(topics.TokenRequest(name), 1, false, req).Wait()
			}()
		}
		wg.Wait()
		for range n {
			select {
			case <-answers:
			case <-time.After(60 * time.Second):
				b.Fatal("not every unit got its token")
			}
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "tokens/s")
	st2, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	for _, l := range strings.Split(string(st2), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			kb, _ := strconv.Atoi(f[1])
			b.ReportMetric(float64(kb)/1024, strings.TrimSuffix(f[0], ":")+"-MB")
		}
	}
}
