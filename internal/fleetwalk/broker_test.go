package fleetwalk

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/deploy/mosquitto"
)

// broker is the Mosquitto the documented install block set up under a
// temporary root, run by the test in place of systemd.
type broker struct {
	t          *testing.T
	root       string // stands for / on the broker
	conf       string // the installed mosquitto.conf, rewritten for the test
	unitPort   int    // 8883
	sharedPort int    // 8884
	cmdPath    string // mosquitto

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  bytes.Buffer
}

// installBroker does what deploy/mosquitto/README.md tells a fleet manager
// to do, with the CA already made in home/fleet-ca: its CA-machine block
// from the module root, with scp copying into home (the broker's root
// home), then its broker block under a temporary root, with apt-get and
// systemctl stubbed (the test starts Mosquitto itself). Only paths are
// substituted: /etc/mosquitto becomes <root>/etc/mosquitto.
func installBroker(t *testing.T, home string) *broker {
	t.Helper()
	mosq := mosquittoBinary(t)
	if os.Geteuid() != 0 {
		t.Skip("the broker install block runs as root (install -o mosquitto)")
	}
	if _, err := user.Lookup("mosquitto"); err != nil {
		t.Skipf("no user mosquitto (apt-get install -y mosquitto): %v", err)
	}
	// Under /tmp itself, not t.TempDir(): Mosquitto drops to the user
	// mosquitto before it reads the ACL and the key, so every directory
	// on the way must be traversable, as /etc is on a real broker.
	root, err := os.MkdirTemp("", "fleetwalk-root")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// What Debian's mosquitto package makes.
	u, _ := user.Lookup("mosquitto")
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, d := range []string{"etc/mosquitto", "var/lib/mosquitto", "var/log/mosquitto"} {
		p := filepath.Join(root, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(d, "var/") {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}

	fake := t.TempDir()
	calls := filepath.Join(fake, "calls")
	fakeTool(t, fake, "apt-get", `echo "apt-get $*" >> `+calls+`; [ "$*" = "install -y mosquitto" ]`)
	fakeTool(t, fake, "systemctl", `echo "systemctl $*" >> `+calls)
	// scp -r SRC HOST:DST copies to DST in the broker's root home (home).
	fakeTool(t, fake, "scp", `[ "$1" = -r ] || exit 2; dst=${3#*:}; cp -r "$2" "$HOME/$dst"`)
	env := []string{"HOME=" + home, "PATH=" + fake + ":" + os.Getenv("PATH")}

	readme := "deploy/mosquitto/README.md"
	shell(t, repoRoot(t), env, docBlock(t, readme, "broker-bundle"))
	block := docBlock(t, readme, "broker-install")
	if !strings.Contains(block, "/etc/mosquitto") {
		t.Fatalf("the broker install block installs nothing under /etc/mosquitto:\n%s", block)
	}
	block = strings.ReplaceAll(block, "/etc/mosquitto", filepath.Join(root, "etc/mosquitto"))
	shell(t, home, env, block)
	got, _ := os.ReadFile(calls)
	if !strings.Contains(string(got), "systemctl restart mosquitto\n") {
		t.Fatalf("the install block never restarts Mosquitto; it ran:\n%s", got)
	}

	installed, err := os.ReadFile(filepath.Join(root, "etc/mosquitto/mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if string(installed) != mosquitto.Conf {
		t.Fatal("the installed /etc/mosquitto/mosquitto.conf is not deploy/mosquitto/mosquitto.conf")
	}
	b := &broker{t: t, root: root}
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	b.unitPort, b.sharedPort = ports[0], ports[1]
	// The test's own changes: its ports on 127.0.0.1, the log on stderr,
	// no pid file, and every path under the temporary root.
	conf := string(installed)
	for _, r := range [][2]string{
		{"\npid_file /run/mosquitto/mosquitto.pid\n", "\n"},
		{"\nlog_dest file /var/log/mosquitto/mosquitto.log\n", "\nlog_dest stderr\n"},
		{"\npersistence_location /var/lib/mosquitto/\n", "\npersistence_location " + filepath.Join(root, "var/lib/mosquitto") + "/\n"},
		{"\nlistener 8883\n", fmt.Sprintf("\nlistener %d 127.0.0.1\n", b.unitPort)},
		{"\nlistener 8884\n", fmt.Sprintf("\nlistener %d 127.0.0.1\n", b.sharedPort)},
		{" /etc/mosquitto/", " " + filepath.Join(root, "etc/mosquitto") + "/"},
	} {
		if !strings.Contains(conf, r[0]) {
			t.Fatalf("the shipped mosquitto.conf has no %q", strings.TrimSpace(r[0]))
		}
		conf = strings.ReplaceAll(conf, r[0], r[1])
	}
	b.conf = filepath.Join(root, "test-mosquitto.conf")
	if err := os.WriteFile(b.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	b.cmdPath = mosq
	t.Cleanup(func() {
		b.stop()
		if t.Failed() {
			t.Logf("mosquitto output:\n%s", b.output())
		}
	})
	b.start()
	return b
}

func mosquittoBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	if os.Getenv("KONSULT_REQUIRE_REAL_PARTS") == "1" {
		t.Fatal("mosquitto not found: apt-get install -y mosquitto")
	}
	t.Skip("mosquitto not found: apt-get install -y mosquitto")
	return ""
}

// freePorts holds every listener open until all n are chosen, so the two
// listeners never get the same just-closed port.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

type lockedWriter struct{ b *broker }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return w.b.log.Write(p)
}

func (b *broker) output() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.log.String()
}

// start runs Mosquitto as systemd would (mosquitto -c the installed conf)
// and waits until both listeners answer, or fails with its output.
func (b *broker) start() {
	b.t.Helper()
	cmd := exec.Command(b.cmdPath, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = lockedWriter{b}, lockedWriter{b}
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	b.mu.Lock()
	b.cmd, b.done = cmd, done
	b.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for _, port := range []int{b.unitPort, b.sharedPort} {
		for {
			select {
			case <-done:
				b.t.Fatalf("Mosquitto did not start on the installed files:\n%s", b.output())
			default:
			}
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				b.t.Fatalf("Mosquitto does not listen on %d:\n%s", port, b.output())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func (b *broker) stop() {
	b.mu.Lock()
	cmd, done := b.cmd, b.done
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// reload is systemctl reload mosquitto: SIGHUP, which re-reads the ACL.
func (b *broker) reload() {
	b.t.Helper()
	b.mu.Lock()
	cmd := b.cmd
	b.mu.Unlock()
	if cmd == nil {
		b.t.Fatal("reload: Mosquitto is not running")
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		b.t.Fatal(err)
	}
}

// restart is systemctl restart mosquitto (which re-reads the CRL).
func (b *broker) restart() {
	b.t.Helper()
	b.stop()
	b.start()
}

// connect opens an MQTT session over TLS with the certificate in
// certFile/keyFile, trusting caFile, and says whether the broker accepted
// it.
func connect(port int, caFile, certFile, keyFile, clientID string) error {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s holds no certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	opts := mqtt.NewClientOptions().
		AddBroker(fmt.Sprintf("ssl://127.0.0.1:%d", port)).
		SetClientID(clientID).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("connect to %d: no answer", port)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("connect to %d as %s: %w", port, clientID, err)
	}
	c.Disconnect(100)
	return nil
}
