package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/konsult/konsult/internal/atomicfile"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// EnvBench10k runs BenchmarkPushToFleet10k (about 2-3 minutes: 10,000 TLS
// connections to set up first).
const EnvBench10k = "KONSULT_BENCH_10K"

// BenchmarkPushToFleet10k: a signed group config pushed to 10,000 simulated
// units on one loopback Mosquitto (the shipped config, with
// max_queued_messages raised: see benchLite, and ACL; TLS with a client
// certificate per unit, one MQTT connection per unit through the
// real provisioning/link). Each unit is light: no Agent, no config schema,
// but what makes a push safe is kept: it verifies the envelope against the
// pinned fleet key (fleet.Verifier: signature, target, time, version above
// the applied one) and applies it atomically (internal/atomicfile: temp
// file, fsync, rename, fsync of the folder), then sends config_applied and
// its reported versions, as the Agent does.
//
// KONSULT_BENCH_10K_UNITS=N runs N units instead; KONSULT_BENCH_10K_QUEUE=
// shipped keeps the shipped max_queued_messages (100000: fleetctl's view
// then fails above ~50,000 units).
//
// KONSULT_BENCH_10K_DIR=/dev/shm puts the units' folders (applied config,
// queued answers) on tmpfs: on one disk the journal serialises the 20,000
// file creations and fsyncs of a push, which real units, each on its own
// disk, do not share.
//
// KONSULT_BENCH_10K_MODE=publish makes the same retained publish without
// fleetctl's push job waiting for and counting the answers (its counting
// is quadratic in the units and shares the two cores with them here), so
// only the units' side is timed; p50/p99/p100-ms are then not reported.
//
// Metrics as in BenchmarkPushToGroup, plus: apply-p99-ms (the units' own
// apply times after the publish), deliver-p50/p100-ms (the envelope's
// arrival at the units: the broker's fan-out), verify-us and apply-us
// (wall time of one verification, and of one atomic write with its fsyncs,
// means), broker-RSS-MB (Mosquitto's growth in resident set with all units
// connected), broker-CPU-s (Mosquitto's CPU time for the push) and view-s
// (fleetctl's first view of the fleet: connect, subscribe, read every
// retained status and reported document).
//
//	KONSULT_BENCH_10K=1 go test -run '^$' -bench PushToFleet10k -benchtime 3x -timeout 30m ./cmd/fleetctl
func BenchmarkPushToFleet10k(b *testing.B) {
	if os.Getenv(EnvBench10k) != "1" {
		b.Skip("set " + EnvBench10k + "=1 (10,000 units; a few minutes)")
	}
	n := 10000
	if v, err := strconv.Atoi(os.Getenv(EnvBench10k + "_UNITS")); err == nil && v > 0 {
		n = v // a smaller fleet, to try the benchmark out
	}
	benchLite(b, n)
}

// liteUnit is one simulated unit: its link, its verifier and what it has
// applied.
type liteUnit struct {
	id      string
	l       *link.Link
	v       *fleet.Verifier
	dir     string
	applied map[string]uint64
	last    map[string][]byte // the envelope applied, by topic
	gen     uint64
	// times of the last push, UnixNano
	delivered, done   atomic.Int64
	verifyNs, applyNs atomic.Int64
	version           atomic.Uint64 // the group config's version applied
	failed            atomic.Value  // string: why the last config was refused
}

func (u *liteUnit) run(ctx context.Context, groups []string) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-u.l.Messages():
			if m.Kind != link.GroupConfig && m.Kind != link.DeviceConfig {
				continue
			}
			u.delivered.Store(time.Now().UnixNano())
			u.apply(m, groups)
		}
	}
}

func (u *liteUnit) apply(m link.Message, groups []string) {
	if bytes.Equal(m.Payload, u.last[m.Topic]) {
		return // the broker hands a retained config over again on a re-subscribe, as the Agent knows
	}
	t0 := time.Now()
	cfg, err := u.v.VerifyConfig(m.Payload, u.applied, nil)
	t1 := time.Now()
	u.verifyNs.Store(int64(t1.Sub(t0)))
	if err != nil {
		u.failed.Store(err.Error())
		return
	}
	// The envelope as received, kept whole: the unit re-verifies it at
	// start. One file, written atomically: all of it or the old one.
	if err := atomicfile.Write(filepath.Join(u.dir, "applied.env"), cfg.Envelope, 0o600); err != nil {
		u.failed.Store(err.Error())
		return
	}
	u.applyNs.Store(int64(time.Since(t1)))
	key := cfg.Target.Key()
	u.applied[key] = cfg.Version
	u.last[m.Topic] = m.Payload
	u.gen++
	u.version.Store(cfg.Version)
	u.done.Store(time.Now().UnixNano())
	_, _ = u.l.PublishEvent(link.Event{Type: fleet.EventConfigApplied, Data: fleet.ConfigApplied{Target: key, Version: cfg.Version, Generation: u.gen}})
	_ = u.l.PublishReported(u.reported(groups))
}

func (u *liteUnit) reported(groups []string) fleet.ReportedDoc {
	return fleet.ReportedDoc{Device: u.id, Groups: groups, Versions: maps2(u.applied), Generation: u.gen, At: time.Now().UTC()}
}

func maps2(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func startLiteUnits(b *testing.B, br *brokertest.Broker, ids []string, group string, pubs []ed25519.PublicKey) []*liteUnit {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	units := make([]*liteUnit, 0, len(ids))
	b.Cleanup(func() {
		cancel()
		wg.Wait()
		var cw sync.WaitGroup
		for _, u := range units {
			cw.Add(1)
			go func() { defer cw.Done(); _ = u.l.Close() }()
		}
		cw.Wait()
	})
	quiet := slog.New(slog.DiscardHandler)
	groups := []string{group}
	root := b.TempDir()
	if d := os.Getenv(EnvBench10k + "_DIR"); d != "" {
		// e.g. /dev/shm: the units' folders off the one shared disk, as
		// each real unit writes to its own.
		var err error
		if root, err = os.MkdirTemp(d, "push10k-"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(root) })
	}
	const batch = 100
	for start := 0; start < len(ids); start += batch {
		end := min(start+batch, len(ids))
		for _, id := range ids[start:end] {
			ident := br.Identity(id)
			dir := filepath.Join(root, id)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				b.Fatal(err)
			}
			v, err := fleet.NewVerifier(fleet.Identity{Device: id, Groups: groups}, pubs...)
			if err != nil {
				b.Fatal(err)
			}
			u := &liteUnit{id: id, v: v, dir: dir, applied: map[string]uint64{}, last: map[string][]byte{}}
			u.l, err = link.Open(link.Options{
				Broker: br.URL(), CAFile: br.CAFile(), CertFile: ident.CertFile, KeyFile: ident.KeyFile,
				DeviceID: id, Groups: groups, StoreDir: filepath.Join(dir, "queue"),
				ConnectTimeout: 60 * time.Second, MinBackoff: 500 * time.Millisecond, MaxBackoff: 5 * time.Second,
				Status: link.Status{Version: "bench-lite"}, Logger: quiet,
			})
			if err != nil {
				b.Fatalf("unit %s: %v", id, err)
			}
			_ = u.l.PublishReported(u.reported(groups))
			units = append(units, u)
			wg.Add(1)
			go func() { defer wg.Done(); u.run(ctx, groups) }()
		}
		deadline := time.Now().Add(120 * time.Second)
		for _, u := range units[start:end] {
			for !u.l.Connected() {
				if time.Now().After(deadline) {
					b.Fatalf("units %d-%d did not all connect within 120 s", start, end-1)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	return units
}

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	var kb int64
	for _, l := range splitLines(string(b)) {
		if _, err := fmt.Sscanf(l, "VmRSS: %d kB", &kb); err == nil {
			return kb
		}
	}
	return 0
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

func pct(d []time.Duration, p int) float64 { return ms(d[(len(d)-1)*p/100]) }

func benchLite(b *testing.B, n int) {
	var lim syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	raiseFileLimit(b, min(lim.Max, uint64(n+4096)))
	prevNow := now
	now = time.Now
	b.Cleanup(func() { now = prevNow })
	getenv = func(string) string { return "" }
	b.Cleanup(func() { getenv = os.Getenv })

	const group = "bench"
	units := make(map[string][]string, n)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("unit-%05d", i)
		units[ids[i]] = []string{group}
	}
	t0 := time.Now()
	before := mosquittoPIDs()
	// fleetctl's view needs 2n queued messages at once (every unit's
	// retained status and reported state); Mosquitto drops what is over
	// max_queued_messages, and fleetctl then never sees all units nor its
	// own sync marker. The shipped 100000 covers 10,000 units; raised here
	// to 4n for larger runs; KONSULT_BENCH_10K_QUEUE=shipped keeps it.
	opts := brokertest.Options{Units: units}
	if os.Getenv(EnvBench10k+"_QUEUE") != "shipped" {
		opts.Conf = map[string]string{"max_queued_messages": strconv.Itoa(4 * n)}
	}
	br := brokertest.Start(b, opts)
	pid := newMosquittoPID(b, before)
	b.Logf("broker with %d unit certificates and ACL lines up in %s", n, time.Since(t0).Round(time.Millisecond))
	keyDir := b.TempDir()
	if err := run(context.Background(), []string{"keygen", "--out", keyDir}, io.Discard, io.Discard); err != nil {
		b.Fatal(err)
	}
	priv, err := fleet.LoadPrivateKey(filepath.Join(keyDir, "fleet.key"))
	if err != nil {
		b.Fatal(err)
	}
	pubs, err := fleet.LoadPublicKeys(filepath.Join(keyDir, "fleet.pub"))
	if err != nil {
		b.Fatal(err)
	}
	brokerRSS0 := rssKB(pid)
	heap0, rss0 := memNow()
	connectStart := time.Now()
	lite := startLiteUnits(b, br, ids, group, pubs)
	connectTook := time.Since(connectStart)
	heap1, rss1 := memNow()
	brokerRSS1 := rssKB(pid)
	b.Logf("%d units connected in %s", n, connectTook.Round(time.Millisecond))

	admin := br.Admin()
	bs := manager.Broker{URL: br.SharedURL(), CA: br.CAFile(), Cert: admin.CertFile, CertKey: admin.KeyFile, Prefix: link.DefaultPrefix}
	t := link.Topics{}
	topic := t.GroupConfig(group)
	ctx := context.Background()
	// fleetctl's first Sync reads every unit's retained status and
	// reported state (2n documents) before its own marker comes back;
	// manager.SyncTimeout (10 s) is too short for that at 10,000 units
	// here, so the benchmark lifts it and reports how long it took.
	prevSync := manager.SyncTimeout
	manager.SyncTimeout = 5 * time.Minute
	b.Cleanup(func() { manager.SyncTimeout = prevSync })
	syncStart := time.Now()
	fc, err := manager.Dial(ctx, bs, slog.New(slog.DiscardHandler), topic, t.AllDevices(link.DeviceStatus), t.AllDevices(link.DeviceReported), t.AllDevices(link.DeviceEvents))
	if err != nil {
		b.Fatal(err)
	}
	defer fc.Close()
	view := manager.NewView()
	dd := manager.NewDedup(1 << 16)
	deadline := time.Now().Add(120 * time.Second)
	for inGroup(view, group) < n {
		if time.Now().After(deadline) {
			b.Fatalf("fleetctl sees %d of %d units in the group", inGroup(view, group), n)
		}
		if err := fc.Sync(ctx, func(m manager.Msg) { view.Feed(m) }); err != nil {
			b.Fatal(err)
		}
	}

	syncTook := time.Since(syncStart)
	b.Logf("fleetctl's first view of the %d units (connect, subscribe, retained documents): %s", n, syncTook.Round(time.Millisecond))
	unitsOnly := os.Getenv(EnvBench10k+"_MODE") == "publish"
	var p50, p99, p100, aP50, aP99, aP100, dP50, dP100, verifyUs, applyUs, brokerCPU, simCPU float64
	self := os.Getpid()
	version := uint64(0)
	for b.Loop() {
		version++
		issued := time.Now().UTC().Truncate(time.Second)
		e, err := fleet.SignConfig(priv, fleet.ConfigPayload{
			Version: version, IssuedAt: issued, ExpiresAt: issued.Add(time.Hour),
			Target: fleet.Target{Group: group}, Config: fmt.Sprintf("[call]\nmax_length = \"%dh\"\n", 1+version%4),
		})
		if err != nil {
			b.Fatal(err)
		}
		p := fleet.ConfigPayload{Kind: fleet.KindConfig, Version: version, Target: fleet.Target{Group: group}}
		c0, s0 := cpuTicks(b, pid), cpuTicks(b, self)
		stopProfile := profilePush(b)
		var pub time.Time
		lat := make([]time.Duration, 0, n)
		if unitsOnly {
			// The retained publish fleetctl push makes, without fleetctl
			// waiting for and counting the answers: the units' side alone.
			pub = time.Now()
			if err := fc.Publish(ctx, topic, true, e.Marshal()); err != nil {
				b.Fatal(err)
			}
			waitApplied(b, lite, version, 5*time.Minute)
		} else {
			job := &manager.PushJob{Payload: p, Topic: topic, Envelope: e.Marshal(), Wait: 5 * time.Minute, Progress: newProgress(io.Discard, time.Now())}
			res, err := job.Run(ctx, fc, view, dd)
			if err != nil {
				b.Fatal(err)
			}
			pub = job.Published()
			for _, r := range res {
				if r.Result != manager.ResApplied {
					b.Fatalf("push %d: unit %s: %s %s %s", version, r.Unit, r.Result, r.Reason, r.Message)
				}
				lat = append(lat, r.Received.Sub(pub))
			}
			if len(lat) != n {
				b.Fatalf("push %d reached %d units, want %d", version, len(lat), n)
			}
		}
		stopProfile()
		c1, s1 := cpuTicks(b, pid), cpuTicks(b, self)
		app := make([]time.Duration, 0, n)
		del := make([]time.Duration, 0, n)
		var vSum, aSum int64
		for _, u := range lite {
			if f, _ := u.failed.Load().(string); f != "" {
				b.Fatalf("unit %s refused a config: %s", u.id, f)
			}
			if u.version.Load() != version {
				b.Fatalf("unit %s has not applied version %d", u.id, version)
			}
			app = append(app, time.Unix(0, u.done.Load()).Sub(pub))
			del = append(del, time.Unix(0, u.delivered.Load()).Sub(pub))
			vSum += u.verifyNs.Load()
			aSum += u.applyNs.Load()
		}
		slices.Sort(app)
		slices.Sort(del)
		if !unitsOnly {
			slices.Sort(lat)
			p50, p99, p100 = p50+pct(lat, 50), p99+pct(lat, 99), p100+pct(lat, 100)
		}
		aP50, aP99, aP100 = aP50+pct(app, 50), aP99+pct(app, 99), aP100+pct(app, 100)
		dP50, dP100 = dP50+pct(del, 50), dP100+pct(del, 100)
		verifyUs += float64(vSum) / float64(n) / 1000
		applyUs += float64(aSum) / float64(n) / 1000
		brokerCPU += float64(c1-c0) / clockTicks
		simCPU += float64(s1-s0) / clockTicks * 1000 / float64(n)
	}
	it := float64(b.N)
	if !unitsOnly {
		b.ReportMetric(p50/it, "p50-ms")
		b.ReportMetric(p99/it, "p99-ms")
		b.ReportMetric(p100/it, "p100-ms")
	}
	b.ReportMetric(aP50/it, "apply-p50-ms")
	b.ReportMetric(aP99/it, "apply-p99-ms")
	b.ReportMetric(aP100/it, "apply-p100-ms")
	b.ReportMetric(dP50/it, "deliver-p50-ms")
	b.ReportMetric(dP100/it, "deliver-p100-ms")
	b.ReportMetric(verifyUs/it, "verify-us")
	b.ReportMetric(applyUs/it, "apply-us")
	b.ReportMetric(brokerCPU/it, "broker-CPU-s")
	b.ReportMetric(simCPU/it, "sim-CPU-ms/unit")
	b.ReportMetric(float64(brokerRSS1-brokerRSS0)/1024, "broker-RSS-MB")
	b.ReportMetric(float64(heap1-heap0)/1024/float64(n), "heap-KB/unit")
	b.ReportMetric(float64(rss1-rss0)/1024/float64(n), "RSS-KB/unit")
	b.ReportMetric(connectTook.Seconds(), "connect-s")
	b.ReportMetric(syncTook.Seconds(), "view-s")
}

// profilePush writes a CPU profile of this process during one push to
// $KONSULT_BENCH_10K_PROFILE, if set (where the units' time goes:
// go tool pprof -top FILE).
func profilePush(b *testing.B) func() {
	path := os.Getenv(EnvBench10k + "_PROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// waitApplied waits until every unit has applied version.
func waitApplied(b *testing.B, units []*liteUnit, version uint64, d time.Duration) {
	deadline := time.Now().Add(d)
	for _, u := range units {
		for u.version.Load() != version {
			if f, _ := u.failed.Load().(string); f != "" {
				b.Fatalf("unit %s refused a config: %s", u.id, f)
			}
			if time.Now().After(deadline) {
				b.Fatalf("unit %s has not applied version %d within %s", u.id, version, d)
			}
			time.Sleep(time.Millisecond)
		}
	}
}
