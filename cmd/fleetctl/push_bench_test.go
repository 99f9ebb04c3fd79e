package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// BenchmarkPushToGroup: a signed config pushed to a group of N simulated
// units on a loopback Mosquitto (the shipped config and ACL, TLS with a
// client certificate per unit, one MQTT connection per unit), measured the
// way fleetctl push sees it: from the retained PUBLISH to each unit's
// answer (config_applied, or its reported versions) arriving at fleetctl.
//
// Each unit is the real appliance/agent Agent (verify, config store with
// fsync, link) with no appliance behind it (Options.Appliance nil, which
// the Agent allows for exactly this), so no call ever defers a config; its
// Apply does nothing. Everything, Mosquitto included, shares this machine's
// cores.
//
// Metrics (mean over the iterations, one push each): p50-ms, p99-ms,
// p100-ms until that share of the units reported it applied; broker-CPU-%
// of one core used by Mosquitto from the publish until the last answer;
// sim-CPU-ms/unit, the CPU this process (the N units and fleetctl) spent
// on the push, divided by N: what one unit's verify, merge, fsynced store
// and reports cost; heap-KB/unit and RSS-KB/unit, the test process's growth
// after the units connected, divided by N; connect-s, how long the N TLS
// connections took.
//
// With N units on two cores the units' work is the bottleneck: the
// scheduler interleaves them, so most finish near the end and p50 sits
// close to p100. On a real fleet each unit has its own CPU, and its answer
// takes about sim-CPU-ms/unit plus the network.
func BenchmarkPushToGroup(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("units=%d", n), func(b *testing.B) { benchPush(b, n) })
	}
}

func benchPush(b *testing.B, n int) {
	raiseFileLimit(b, uint64(4*n+1024))
	prevNow := now
	now = time.Now
	b.Cleanup(func() { now = prevNow })
	getenv = func(string) string { return "" }
	b.Cleanup(func() { getenv = os.Getenv })

	const group = "bench"
	units := make(map[string][]string, n)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("unit-%04d", i)
		units[ids[i]] = []string{group}
	}
	before := mosquittoPIDs()
	br := brokertest.Start(b, brokertest.Options{Units: units})
	pid := newMosquittoPID(b, before)
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

	heap0, rss0 := memNow()
	connectStart := time.Now()
	applied := make([]atomic.Int64, n) // unit i's last Apply, UnixNano
	agents := startBenchUnits(b, br, ids, group, pubs, applied)
	connectTook := time.Since(connectStart)
	heap1, rss1 := memNow()
	runtime.KeepAlive(agents)

	admin := br.Admin()
	bs := manager.Broker{URL: br.SharedURL(), CA: br.CAFile(), Cert: admin.CertFile, CertKey: admin.KeyFile, Prefix: link.DefaultPrefix}
	t := link.Topics{}
	topic := t.GroupConfig(group)
	ctx := context.Background()
	fc, err := manager.Dial(ctx, bs, slog.New(slog.DiscardHandler), topic, t.AllDevices(link.DeviceStatus), t.AllDevices(link.DeviceReported), t.AllDevices(link.DeviceEvents))
	if err != nil {
		b.Fatal(err)
	}
	defer fc.Close()
	view := manager.NewView()
	dd := manager.NewDedup(1 << 16)
	// Every unit announces itself on connect; wait until fleetctl sees all
	// of them in the group, as a fleet manager's push would.
	deadline := time.Now().Add(60 * time.Second)
	for inGroup(view, group) < n {
		if time.Now().After(deadline) {
			b.Fatalf("fleetctl sees %d of %d units in the group", inGroup(view, group), n)
		}
		if err := fc.Sync(ctx, func(m manager.Msg) { view.Feed(m) }); err != nil {
			b.Fatal(err)
		}
	}

	var p50, p99, p100, cpu, simCPU, applyP50, applyP100 float64
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
		job := &manager.PushJob{Payload: p, Topic: topic, Envelope: e.Marshal(), Wait: 2 * time.Minute, Progress: newProgress(io.Discard, time.Now())}
		c0, s0, t0 := cpuTicks(b, pid), cpuTicks(b, self), time.Now()
		res, err := job.Run(ctx, fc, view, dd)
		if err != nil {
			b.Fatal(err)
		}
		c1, s1, t1 := cpuTicks(b, pid), cpuTicks(b, self), time.Now()
		lat := make([]time.Duration, 0, len(res))
		app := make([]time.Duration, 0, n)
		for i := range applied {
			app = append(app, time.Unix(0, applied[i].Load()).Sub(job.Published()))
		}
		slices.Sort(app)
		applyP50 += ms(app[(n-1)*50/100])
		applyP100 += ms(app[n-1])
		for _, r := range res {
			if r.Result != manager.ResApplied {
				b.Fatalf("push %d: unit %s: %s %s %s", version, r.Unit, r.Result, r.Reason, r.Message)
			}
			lat = append(lat, r.Received.Sub(job.Published()))
		}
		if len(lat) != n {
			b.Fatalf("push %d reached %d units, want %d", version, len(lat), n)
		}
		slices.Sort(lat)
		p50 += ms(lat[(n-1)*50/100])
		p99 += ms(lat[(n-1)*99/100])
		p100 += ms(lat[n-1])
		cpu += float64(c1-c0) / clockTicks / t1.Sub(t0).Seconds() * 100
		simCPU += float64(s1-s0) / clockTicks * 1000 / float64(n)
	}
	iters := float64(b.N)
	b.ReportMetric(p50/iters, "p50-ms")
	b.ReportMetric(p99/iters, "p99-ms")
	b.ReportMetric(p100/iters, "p100-ms")
	b.ReportMetric(cpu/iters, "broker-CPU-%")
	b.ReportMetric(simCPU/iters, "sim-CPU-ms/unit")
	b.ReportMetric(applyP50/iters, "apply-p50-ms")
	b.ReportMetric(applyP100/iters, "apply-p100-ms")
	b.ReportMetric(float64(heap1-heap0)/1024/float64(n), "heap-KB/unit")
	b.ReportMetric(float64(rss1-rss0)/1024/float64(n), "RSS-KB/unit")
	b.ReportMetric(connectTook.Seconds(), "connect-s")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func inGroup(v *manager.View, g string) int {
	n := 0
	for _, u := range v.Sorted() {
		if u.InGroup(g) && u.Online() {
			n++
		}
	}
	return n
}

// startBenchUnits starts one Agent per id and waits until all are
// connected. They connect in batches: a thousand TLS handshakes at once
// overflow the broker's accept backlog, and the retries that follow would
// measure TCP's SYN timeout rather than anything of ours.
func startBenchUnits(b *testing.B, br *brokertest.Broker, ids []string, group string, pubs []ed25519.PublicKey, applied []atomic.Int64) []*agent.Agent {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// All at once: each link's Close waits for its offline status to be
	// acknowledged, which one after another would take minutes.
	b.Cleanup(func() { cancel(); wg.Wait() })
	quiet := slog.New(slog.DiscardHandler)
	agents := make([]*agent.Agent, 0, len(ids))
	const batch = 50
	for start := 0; start < len(ids); start += batch {
		end := min(start+batch, len(ids))
		for i, id := range ids[start:end] {
			ident := br.Identity(id)
			at := &applied[start+i]
			a, err := agent.New(agent.Options{
				StateDir: b.TempDir(),
				Keys:     pubs,
				Connection: agent.Connection{Link: link.Options{
					Broker: br.URL(), CAFile: br.CAFile(), CertFile: ident.CertFile, KeyFile: ident.KeyFile,
					DeviceID: id, Groups: []string{group},
					ConnectTimeout: 30 * time.Second, MinBackoff: 200 * time.Millisecond, MaxBackoff: 2 * time.Second,
				}},
				Apply:   func([]byte) error { at.Store(time.Now().UnixNano()); return nil },
				Version: "bench",
				Logger:  quiet,
			})
			if err != nil {
				b.Fatalf("unit %s: %v", id, err)
			}
			agents = append(agents, a)
			wg.Add(1)
			go func() { defer wg.Done(); _ = a.Run(ctx) }()
		}
		deadline := time.Now().Add(60 * time.Second)
		for _, a := range agents[start:end] {
			for !a.Connected() {
				if time.Now().After(deadline) {
					b.Fatalf("units %d-%d did not all connect within 60 s", start, end-1)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	return agents
}

// raiseFileLimit lifts the open-file limit to want (within the hard limit):
// every unit holds a socket here and one in Mosquitto, which inherits the
// limit from this process.
func raiseFileLimit(b *testing.B, want uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("getrlimit: %v", err)
	}
	if lim.Cur >= want {
		return
	}
	if lim.Max < want {
		b.Fatalf("open-file hard limit %d is below the %d this benchmark needs: raise it (ulimit -Hn) as root", lim.Max, want)
	}
	old := lim.Cur
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("setrlimit: %v", err)
	}
	b.Cleanup(func() {
		lim.Cur = old
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	})
}

// mosquittoPIDs lists the Mosquitto processes this process started.
func mosquittoPIDs() map[int]bool {
	out := map[int]bool{}
	dirs, _ := os.ReadDir("/proc")
	me := os.Getpid()
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(stat)
		open, closeP := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closeP < open {
			continue
		}
		f := strings.Fields(s[closeP+2:])
		if ppid, _ := strconv.Atoi(f[1]); ppid == me && s[open+1:closeP] == "mosquitto" {
			out[pid] = true
		}
	}
	return out
}

func newMosquittoPID(b *testing.B, before map[int]bool) int {
	for pid := range mosquittoPIDs() {
		if !before[pid] {
			return pid
		}
	}
	b.Fatal("cannot find the benchmark's Mosquitto among this process's children")
	return 0
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times (100 on
// Linux everywhere Go runs).
const clockTicks = 100

// cpuTicks is utime+stime of pid.
func cpuTicks(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// memNow is the live heap after a full GC, and this process's resident
// set, in bytes.
func memNow() (heap, rss uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				rss = kb * 1024
			}
		}
	}
	return ms.HeapAlloc, rss
}
