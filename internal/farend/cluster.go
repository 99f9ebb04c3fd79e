package farend

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvRedisServer overrides where redis-server is looked up.
const EnvRedisServer = "KONSULT_REDIS_SERVER"

// Redis is a real redis-server (Debian's) on 127.0.0.1 without persistence:
// the shared state of a LiveKit cluster.
type Redis struct {
	Addr    string // 127.0.0.1:port
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

// RedisServerPath is the redis-server binary, or "" when not installed.
func RedisServerPath() string {
	return findPart(EnvRedisServer, "/usr/bin/redis-server", "/usr/sbin/redis-server")
}

// StartRedis starts a redis-server on a free loopback port and waits until
// it answers PING. It is stopped on t.Cleanup.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin := RedisServerPath()
	if bin == "" {
		missing(t, "redis-server not found (apt-get install redis-server, .ci/cluster-setup.sh, or $"+EnvRedisServer+")")
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreeTCPPort()
		if err != nil {
			t.Fatalf("farend: redis port: %v", err)
		}
		r := &Redis{Addr: fmt.Sprintf("127.0.0.1:%d", port), LogPath: filepath.Join(dir, "redis.log"), done: make(chan struct{})}
		if lastErr = r.start(bin, dir, port); lastErr == nil {
			t.Cleanup(r.Stop)
			return r
		}
		t.Logf("farend: redis start attempt %d: %v", attempt+1, lastErr)
	}
	t.Fatalf("farend: starting redis-server: %v", lastErr)
	return nil
}

func (r *Redis) start(bin, dir string, port int) error {
	logf, err := os.OpenFile(r.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", dir, "--protected-mode", "yes")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	go func() { _ = cmd.Wait(); logf.Close(); close(r.done) }()
	r.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-r.done:
			return fmt.Errorf("redis-server exited during start: %s", tailFile(r.LogPath, 800))
		default:
		}
		if ping(r.Addr) == nil {
			return nil
		}
		if time.Now().After(deadline) {
			r.Stop()
			return errors.New("redis-server not answering PING after 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(buf[:n]), "+PONG") {
		return fmt.Errorf("redis answered %q", buf[:n])
	}
	return nil
}

// Stop kills the server (it keeps nothing on disk).
func (r *Redis) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	<-r.done
}

// Cluster is several livekit-server nodes sharing one Redis, each on its own
// HTTP and UDP ports on 127.0.0.1, with one API key and secret: a room lives
// on one node and is reached through any of them.
type Cluster struct {
	Redis *Redis
	Nodes []*LiveKit
}

// StartLiveKitCluster starts a Redis and n LiveKit nodes on it, and waits
// until every node sees all n in the cluster.
func StartLiveKitCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	r := StartRedis(t)
	secret := "cluster-" + randHex(16)
	c := &Cluster{Redis: r}
	for i := 0; i < n; i++ {
		lk := StartLiveKit(t, func(lk *LiveKit) {
			lk.APISecret = secret
			// Every node in one region: the room goes to any node
			// (node_selector "any", random), reached through the others.
			lk.extra = fmt.Sprintf("redis:\n  address: %s\n", r.Addr)
		})
		c.Nodes = append(c.Nodes, lk)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ids := c.NodeIDs()
		if len(ids) == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("farend: cluster: node ids %v, want %d", ids, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

var nodeIDRe = regexp.MustCompile(`"nodeID": "([^"]+)"`)

// NodeID is the id the node gave itself (from its log), or "".
func (lk *LiveKit) NodeID() string {
	m := nodeIDRe.FindStringSubmatch(firstLines(lk.Log(), 40))
	if m == nil {
		return ""
	}
	return m[1]
}

func firstLines(s string, n int) string {
	for i, c := 0, 0; i < len(s); i++ {
		if s[i] == '\n' {
			if c++; c == n {
				return s[:i]
			}
		}
	}
	return s
}

// NodeIDs are the ids of the nodes that have logged one.
func (c *Cluster) NodeIDs() []string {
	var ids []string
	for _, lk := range c.Nodes {
		if id := lk.NodeID(); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// RoomNode is the node the cluster placed room on (the latest "selected
// node for room" any node logged for it), or nil.
func (c *Cluster) RoomNode(room string) *LiveKit {
	re := regexp.MustCompile(`selected node for room.*"room": "` + regexp.QuoteMeta(room) + `".*"selectedNodeID": "([^"]+)"`)
	var id string
	var at time.Time
	for _, lk := range c.Nodes {
		for _, l := range strings.Split(lk.Log(), "\n") {
			m := re.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			ts, _ := time.Parse("2006-01-02T15:04:05.000Z0700", strings.Fields(l)[0])
			if id == "" || !ts.Before(at) {
				id, at = m[1], ts
			}
		}
	}
	for _, lk := range c.Nodes {
		if id != "" && lk.NodeID() == id {
			return lk
		}
	}
	return nil
}

// Kill ends the node at once (SIGKILL to its process group), as a crashed
// machine would: no participant is told anything.
func (lk *LiveKit) Kill() {
	if lk.cmd == nil || lk.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-lk.cmd.Process.Pid, syscall.SIGKILL)
	<-lk.done
}

// Failover is a TCP front for signalling (HTTP, WebSocket, WHIP) that sends
// each new connection to the first node in its list that accepts one, as
// a clinic's load balancer in front of a LiveKit cluster does once its
// health check has marked a node down. Media does not pass through it: ICE
// goes to each node's own UDP port.
type Failover struct {
	ln    net.Listener
	nodes []*LiveKit
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartFailover listens on 127.0.0.1 in front of nodes (in order of
// preference) and returns a LiveKit whose URL, WSURL, key and secret are
// the front's: StartFarEnd and the unit use it as they would one server.
// Closed on t.Cleanup.
func StartFailover(t testing.TB, nodes ...*LiveKit) *LiveKit {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("farend: failover: %v", err)
	}
	f := &Failover{ln: ln, nodes: nodes, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.Close)
	port := ln.Addr().(*net.TCPAddr).Port
	// Not a process: Stop and Kill do nothing.
	return &LiveKit{
		URL: fmt.Sprintf("http://127.0.0.1:%d", port), WSURL: fmt.Sprintf("ws://127.0.0.1:%d", port), HTTPPort: port,
		APIKey: nodes[0].APIKey, APISecret: nodes[0].APISecret, LogPath: nodes[0].LogPath, nodeIP: nodes[0].nodeIP,
	}
}

func (f *Failover) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() { defer f.wg.Done(); f.relay(c) }()
	}
}

func (f *Failover) relay(c net.Conn) {
	defer c.Close()
	var up net.Conn
	for _, n := range f.nodes {
		if n.Exited() {
			continue
		}
		var err error
		if up, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", n.HTTPPort), time.Second); err == nil {
			break
		}
	}
	if up == nil {
		return
	}
	defer up.Close()
	f.mu.Lock()
	f.conns[c], f.conns[up] = struct{}{}, struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		delete(f.conns, up)
		f.mu.Unlock()
	}()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done // either side gone: close both
}

// Close stops listening and cuts every relayed connection.
func (f *Failover) Close() {
	_ = f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
