package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The button benchmarks (edge to LED, edge to gate) are in appliance/unit.

// BenchmarkStartToReady: `roomd --sim` as a process, from exec to "roomd
// ready" on stdout; also reports its idle resident memory.
func BenchmarkStartToReady(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "roomd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	var total time.Duration
	var rssKB int
	i := 0
	for b.Loop() {
		i++
		sock := filepath.Join(dir, "s"+strconv.Itoa(i))
		cmd := exec.Command(bin, "--sim", "--socket", sock, "--http", "off")
		out, _ := cmd.StdoutPipe()
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		for sc.Scan() && !strings.HasPrefix(sc.Text(), "roomd ready") {
		}
		total += time.Since(start)
		if i == 1 {
			time.Sleep(time.Second) // settle, then measure idle memory
			rssKB = vmRSS(b, cmd.Process.Pid)
		}
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/start→ready")
	b.ReportMetric(float64(rssKB), "idle-RSS-KB")
}

func vmRSS(b *testing.B, pid int) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return 0
}
