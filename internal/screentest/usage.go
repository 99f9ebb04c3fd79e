package screentest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Usage is the CPU time and memory (proportional set size: shared pages
// split between the processes that share them) of the screen's Chromium,
// all its processes (its own process group), read from /proc.
func (s *Browser) Usage() (cpu time.Duration, rss int64) {
	leader := 0
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	type proc struct {
		dir         string
		pgrp, ticks int64
	}
	var procs []proc
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		fs := strings.Fields(string(b[i+1:]))
		if len(fs) < 22 {
			continue
		}
		pgrp, _ := strconv.ParseInt(fs[2], 10, 64)
		ut, _ := strconv.ParseInt(fs[11], 10, 64)
		st, _ := strconv.ParseInt(fs[12], 10, 64)
		procs = append(procs, proc{filepath.Dir(f), pgrp, ut + st})
		if leader == 0 {
			cmd, _ := os.ReadFile(filepath.Join(filepath.Dir(f), "cmdline"))
			if strings.Contains(string(cmd), "--remote-debugging-port="+strconv.Itoa(s.port)+"\x00") {
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
				leader = pid
			}
		}
	}
	var ticks int64
	for _, p := range procs {
		if leader != 0 && p.pgrp == int64(leader) {
			ticks += p.ticks
			rss += pss(p.dir)
		}
	}
	return time.Duration(ticks) * time.Second / 100, rss // USER_HZ is 100 on Linux
}

func pss(dir string) int64 {
	b, err := os.ReadFile(filepath.Join(dir, "smaps_rollup"))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
