//go:build linux

// Command guest is /init in the QEMU lab's initramfs: it brings the guest
// up (filesystems, modules, network, a gpio-sim chip), plays the room's
// physical parts the test cannot reach directly (the shutter mechanism,
// which moves when its actuator line changes and answers with the sensor
// lines), and serves a small HTTP agent on :8080 that the host test reaches
// through QEMU's user-network port forward. It is lab equipment, never
// shipped.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The lines of the simulated chip, in offset order: the generic board
// profile names them under [pins] in the lab's roomd config.
var lines = []string{"JOIN", "LEAVE", "PRIVACY", "MUTE", "LED", "SHUTTER", "SHUTTER_OPEN", "SHUTTER_CLOSED"}

var (
	t0        = time.Now()
	events    = newLog()
	roomdLog  = newLog()
	gpioDir   string // /sys/devices/platform/<dev>/<chip>
	missing   []string
	roomdMu   sync.Mutex
	roomd     *exec.Cmd
	roomdDone chan struct{} // closed when roomd has exited
	ready     time.Time
	travel    = 300 * time.Millisecond
)

func main() {
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("guest: ")
	mounts()
	mods, _ := os.ReadFile("/etc/lab/modules")
	// One module a line, dependencies first: "path [param=value ...]".
	for _, l := range strings.Split(strings.TrimSpace(string(mods)), "\n") {
		m, params, _ := strings.Cut(l, " ")
		if m == "" {
			continue
		}
		if err := loadModule(m, params); err != nil {
			log.Printf("module %s: %v", m, err)
			if strings.Contains(m, "/oot/") {
				missing = append(missing, filepath.Base(m)+": "+err.Error())
			}
		}
	}
	network()
	if err := gpioSim(); err != nil {
		log.Printf("gpio-sim: %v", err)
		missing = append(missing, "gpio-sim chip: "+err.Error())
	} else {
		go mechanism()
	}
	log.Printf("agent up %.2fs after init started (kernel uptime %s)", time.Since(t0).Seconds(), uptime())
	http.HandleFunc("/health", health)
	http.HandleFunc("/gpio", gpioState)
	http.HandleFunc("/pull", setPull)
	http.HandleFunc("/roomd/start", startRoomd)
	http.HandleFunc("/roomd/stop", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(stopRoomdWait(20*time.Second) + "\n")) })
	http.HandleFunc("/roomd/status", roomdStatus)
	http.HandleFunc("/roomd/log", func(w http.ResponseWriter, r *http.Request) { w.Write(roomdLog.bytes()) })
	http.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) { w.Write(events.bytes()) })
	http.HandleFunc("/sh", shell)
	http.HandleFunc("/bench", bench)
	http.HandleFunc("/poweroff", func(w http.ResponseWriter, r *http.Request) {
		stopRoomd()
		w.Write([]byte("bye\n"))
		go func() { time.Sleep(100 * time.Millisecond); unix.Sync(); unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF) }()
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}

func uptime() string {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0] + "s"
}

func mounts() {
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"}, {"tmpfs", "/run", "tmpfs"}, {"devpts", "/dev/pts", "devpts"},
	} {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil {
			log.Printf("mount %s: %v", m.dst, err)
		}
	}
}

func loadModule(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil && err != unix.EEXIST {
		return err
	}
	return nil
}

func bb(args ...string) error {
	out, err := exec.Command("/bin/busybox", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// network: QEMU's user network gives 10.0.2.15/24, gateway (the host's
// loopback) 10.0.2.2.
func network() {
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "addr", "add", "10.0.2.15/24", "dev", "eth0"},
		{"ip", "route", "add", "default", "via", "10.0.2.2"},
	} {
		if err := bb(c...); err != nil {
			log.Print(err)
		}
	}
}

// gpioSim makes one chip through configfs with named lines.
func gpioSim() error {
	_ = os.MkdirAll("/sys/kernel/config", 0o755)
	_ = unix.Mount("configfs", "/sys/kernel/config", "configfs", 0, "")
	base := "/sys/kernel/config/gpio-sim/lab"
	if err := os.Mkdir(base, 0o755); err != nil {
		return fmt.Errorf("configfs: %w (is the gpio-sim module loaded?)", err)
	}
	bank := base + "/bank0"
	if err := os.Mkdir(bank, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(bank+"/num_lines", []byte(strconv.Itoa(len(lines))), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(bank+"/label", []byte("konsult-lab"), 0o644); err != nil {
		return err
	}
	for i, n := range lines {
		d := fmt.Sprintf("%s/line%d", bank, i)
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(d+"/name", []byte(n), 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(base+"/live", []byte("1"), 0o644); err != nil {
		return err
	}
	dev, _ := os.ReadFile(base + "/dev_name")
	chip, _ := os.ReadFile(bank + "/chip_name")
	gpioDir = filepath.Join("/sys/devices/platform", strings.TrimSpace(string(dev)), strings.TrimSpace(string(chip)))
	// Released buttons (active-low: pulled up); shutter closed: the
	// closed sensor (a switch to ground) active, the open one not.
	for _, n := range []string{"JOIN", "LEAVE", "PRIVACY", "MUTE", "SHUTTER_OPEN"} {
		_ = writePull(n, "pull-up")
	}
	_ = writePull("SHUTTER_CLOSED", "pull-down")
	log.Printf("gpio-sim chip %s with lines %s", gpioDir, strings.Join(lines, ","))
	return nil
}

func lineDir(name string) (string, error) {
	for i, n := range lines {
		if n == name {
			return fmt.Sprintf("%s/sim_gpio%d", gpioDir, i), nil
		}
	}
	return "", fmt.Errorf("no line %q", name)
}

func readAttr(name, attr string) string {
	d, err := lineDir(name)
	if err != nil {
		return ""
	}
	b, _ := os.ReadFile(d + "/" + attr)
	return strings.TrimSpace(string(b))
}

func writePull(name, pull string) error {
	d, err := lineDir(name)
	if err != nil {
		return err
	}
	return os.WriteFile(d+"/pull", []byte(pull), 0o644)
}

// mechanism is the shutter: when the actuator line goes high it travels
// open (the closed switch releases at once, the open switch closes after
// the travel time), and back when the line goes low. A consumer that asks
// for a pull-up on a sensor line overrides gpio-sim's simulated pull, so
// the switches' state is re-asserted whenever it differs. Every change of
// an output line is logged with its time for the test.
func mechanism() {
	want := map[string]string{"SHUTTER_OPEN": "pull-up", "SHUTTER_CLOSED": "pull-down"}
	last := map[string]string{}
	var moveAt time.Time
	var target string
	for {
		for _, out := range []string{"LED", "SHUTTER"} {
			v := readAttr(out, "value")
			if v != last[out] {
				events.add(fmt.Sprintf("%d %s=%s", time.Now().UnixMicro(), out, v))
				if out == "SHUTTER" && last[out] != "" {
					if v == "1" {
						want["SHUTTER_CLOSED"], target = "pull-up", "open"
					} else {
						want["SHUTTER_OPEN"], target = "pull-up", "closed"
					}
					moveAt = time.Now().Add(travel)
				}
				last[out] = v
			}
		}
		if target != "" && time.Now().After(moveAt) {
			if target == "open" {
				want["SHUTTER_OPEN"] = "pull-down"
			} else {
				want["SHUTTER_CLOSED"] = "pull-down"
			}
			events.add(fmt.Sprintf("%d shutter %s", time.Now().UnixMicro(), target))
			target = ""
		}
		for n, p := range want {
			if readAttr(n, "pull") != p {
				_ = writePull(n, p)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func health(w http.ResponseWriter, r *http.Request) {
	roomdMu.Lock()
	rd := ready
	roomdMu.Unlock()
	json.NewEncoder(w).Encode(map[string]any{
		"uptime": uptime(), "missing": missing, "gpio": gpioDir,
		"roomd_ready_unix_us": micro(rd), "now_unix_us": time.Now().UnixMicro(),
	})
}

func micro(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func gpioState(w http.ResponseWriter, r *http.Request) {
	out := map[string]map[string]string{}
	for _, n := range lines {
		out[n] = map[string]string{"value": readAttr(n, "value"), "pull": readAttr(n, "pull")}
	}
	json.NewEncoder(w).Encode(out)
}

// setPull is a finger on a button: pull-down presses an active-low button.
func setPull(w http.ResponseWriter, r *http.Request) {
	n, p := r.URL.Query().Get("line"), r.URL.Query().Get("pull")
	if err := writePull(n, p); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	events.add(fmt.Sprintf("%d %s pull %s", time.Now().UnixMicro(), n, p))
	fmt.Fprintf(w, "%d\n", time.Now().UnixMicro())
}

func startRoomd(w http.ResponseWriter, r *http.Request) {
	roomdMu.Lock()
	defer roomdMu.Unlock()
	if roomd != nil {
		http.Error(w, "already running", http.StatusConflict)
		return
	}
	config := "/etc/konsult/roomd.toml"
	if c := r.URL.Query().Get("config"); c != "" {
		config = c // the lab's other roomd configs (the echo test's aec = false)
	}
	cmd := exec.Command("/usr/bin/roomd", "--config", config)
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE=/etc/lab/ca.pem", "HOME=/root", "PATH=/usr/bin:/bin", "KONSULT_SOCKET=/run/roomd.sock")
	pr, pw, _ := os.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	pw.Close()
	started := time.Now()
	roomd, ready = cmd, time.Time{}
	exited := make(chan struct{})
	roomdDone = exited
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			roomdLog.add(l)
			if strings.HasPrefix(l, "roomd ready:") {
				roomdMu.Lock()
				ready = time.Now()
				roomdMu.Unlock()
			}
		}
		err := cmd.Wait()
		roomdLog.add(fmt.Sprintf("roomd exited: %v", err))
	}()
	fmt.Fprintf(w, "%d\n", started.UnixMicro())
}

// stopRoomdWait stops roomd and waits for it to exit (its GPIO lines and
// sound devices free again), so the next /roomd/start can run another one.
func stopRoomdWait(d time.Duration) string {
	stopRoomd()
	roomdMu.Lock()
	done := roomdDone
	roomdMu.Unlock()
	if done == nil {
		return "not running"
	}
	select {
	case <-done:
	case <-time.After(d):
		return "still running after " + d.String()
	}
	roomdMu.Lock()
	roomd, roomdDone, ready = nil, nil, time.Time{}
	roomdMu.Unlock()
	return "stopped"
}

// roomdStatus relays roomd's GET /v1/status from its local API socket.
func roomdStatus(w http.ResponseWriter, r *http.Request) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", "/run/roomd.sock")
		}}}
	resp, err := c.Get("http://roomd/v1/status")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

func stopRoomd() {
	roomdMu.Lock()
	defer roomdMu.Unlock()
	if roomd != nil && roomd.Process != nil {
		_ = roomd.Process.Signal(syscall.SIGTERM)
	}
}

func shell(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	b.ReadFrom(r.Body)
	out, err := exec.Command("/bin/busybox", "sh", "-c", b.String()).CombinedOutput()
	w.Write(out)
	if err != nil {
		fmt.Fprintf(w, "\nexit: %v\n", err)
	}
}

// bench runs the encoder benchmark helper (a cgo binary beside roomd).
func bench(w http.ResponseWriter, r *http.Request) {
	cmd := exec.Command("/usr/bin/labbench", "-frames", r.URL.Query().Get("frames"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		http.Error(w, fmt.Sprintf("labbench: %v: %s", err, out), 500)
		return
	}
	w.Write(out)
}

type lineLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func newLog() *lineLog { return &lineLog{} }

func (l *lineLog) add(s string) {
	l.mu.Lock()
	l.b.WriteString(s + "\n")
	l.mu.Unlock()
}

func (l *lineLog) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b.Bytes()...)
}
