// Package brokertest starts a real Mosquitto for tests: the shipped
// deploy/mosquitto configuration and ACL, and the product's fleet CA
// (provisioning/ca: a throwaway one unless the test brings its own) issuing
// the server certificate for 127.0.0.1, the fleet manager's and named
// clients' certificates, and the revocation list the broker loads.
package brokertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/konsult/konsult/deploy/mosquitto"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/link"
)

// Options describes the broker's clients.
type Options struct {
	// Units maps each unit's device id to its groups; each gets a client
	// certificate and the ACL lines for its groups.
	Units map[string][]string
	// Others get client certificates but no ACL lines of their own (the
	// shipped %u patterns still apply): e.g. an unknown device.
	Others []string
	// Admin is the fleet manager's CN (default "fleet-admin").
	Admin string
	// CA, if set, is the fleet CA (fleetctl ca init) that issues every
	// certificate, recorded in its ledger, and whose revocation list the
	// broker loads at each (re)start; by default a throwaway one.
	CA *ca.CA
	// Conf replaces these settings of the shipped mosquitto.conf (key →
	// value, e.g. "max_queued_messages": "40000"); for benchmarks that
	// show what a larger fleet needs.
	Conf map[string]string
}

// Identity is a client certificate issued by the fleet CA.
type Identity struct {
	Name     string
	CertFile string
	KeyFile  string
}

// Broker is a running Mosquitto.
type Broker struct {
	t    testing.TB
	dir  string
	conf string
	crl  string
	port int // the enrolled units' listener (8883)
	// sharedPort is the listener of enrolling units and the fleet
	// manager (8884).
	sharedPort int
	pki        *pki
	ids        map[string]Identity
	admin      string
	mosq       string
	clientTLS  *tls.Config // the admin's, to probe readiness

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  bytes.Buffer // every run's output, appended
}

// InstallHint says how to get Mosquitto.
const InstallHint = "install Mosquitto: apt-get install -y mosquitto (or run .ci/setup)"

// Start starts Mosquitto on a free 127.0.0.1 port and stops it when the test
// ends. Without a mosquitto binary the test is skipped, or fails if
// KONSULT_REQUIRE_REAL_PARTS=1.
func Start(t testing.TB, opts Options) *Broker {
	t.Helper()
	mosq := findMosquitto()
	if mosq == "" {
		if os.Getenv("KONSULT_REQUIRE_REAL_PARTS") == "1" {
			t.Fatalf("brokertest: mosquitto not found; %s", InstallHint)
		}
		t.Skipf("brokertest: mosquitto not found; %s", InstallHint)
	}
	if opts.Admin == "" {
		opts.Admin = "fleet-admin"
	}
	b := &Broker{t: t, dir: t.TempDir(), ids: map[string]Identity{}, admin: opts.Admin, mosq: mosq}
	if err := b.setup(opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Stop()
		if t.Failed() {
			t.Logf("mosquitto output:\n%s", b.Log())
		}
	})
	b.Restart()
	return b
}

func findMosquitto() string {
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	// Debian installs it in /usr/sbin, which a non-root PATH often lacks.
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func (b *Broker) setup(opts Options) error {
	var err error
	if b.pki, err = newPKI(b.dir, opts.CA); err != nil {
		return err
	}
	b.crl = filepath.Join(b.dir, "crl.pem")
	serverCert, serverKey, err := b.pki.tool(ca.KindServer, "server", []string{"127.0.0.1", "localhost"})
	if err != nil {
		return err
	}
	if err := link.ValidName(opts.Admin); err != nil {
		return fmt.Errorf("brokertest: identity: %w", err)
	}
	adminCert, adminKey, err := b.pki.tool(ca.KindAdmin, opts.Admin, nil)
	if err != nil {
		return err
	}
	b.ids[opts.Admin] = Identity{Name: opts.Admin, CertFile: adminCert, KeyFile: adminKey}
	var names []string
	seen := map[string]bool{opts.Admin: true}
	for _, n := range append(slices.Collect(maps.Keys(opts.Units)), opts.Others...) {
		if err := link.ValidName(n); err != nil {
			return fmt.Errorf("brokertest: identity: %w", err)
		}
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	ids, err := b.pki.units(names)
	if err != nil {
		return err
	}
	maps.Copy(b.ids, ids)
	acl, err := link.ACL(opts.Units, opts.Admin)
	if err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	aclFile := filepath.Join(b.dir, "acl")
	if err := os.WriteFile(aclFile, []byte(acl), 0o644); err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	dataDir := filepath.Join(b.dir, "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	b.port, b.sharedPort = ports[0], ports[1]
	conf, err := renderConf(mosquitto.Conf, map[string]string{
		"pid_file":             "",
		"log_dest":             "stderr",
		"persistence_location": dataDir + "/",
		"listener 8883":        strconv.Itoa(b.port) + " 127.0.0.1",
		"listener 8884":        strconv.Itoa(b.sharedPort) + " 127.0.0.1",
		"cafile":               b.pki.CAFile,
		"certfile":             serverCert,
		"keyfile":              serverKey,
		"acl_file":             aclFile,
		"crlfile":              b.crl,
	})
	for k, v := range opts.Conf {
		if err == nil {
			conf, err = renderConf(conf, map[string]string{k: v})
		}
	}
	if err != nil {
		return err
	}
	// Subscriptions in the log let tests check what a client asked for.
	conf += "\n# brokertest\nlog_type subscribe\nlog_type unsubscribe\n"
	b.conf = filepath.Join(b.dir, "mosquitto.conf")
	if err := os.WriteFile(b.conf, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	if err := shareWithBrokerUser(b.dir, serverKey, dataDir); err != nil {
		return err
	}

	cert, err := tls.LoadX509KeyPair(adminCert, adminKey)
	if err != nil {
		return fmt.Errorf("brokertest: %w", err)
	}
	b.clientTLS = &tls.Config{RootCAs: b.CertPool(), Certificates: []tls.Certificate{cert}}
	return nil
}

// renderConf replaces the value of each key in subs on its (uncommented)
// lines of the shipped conf; an empty value drops the line. A key of the
// form "listener 8883" matches that line only (the shipped conf has one
// listener per port); other keys match every line that sets them (cafile,
// certfile, ... once per listener). A key missing from the shipped conf is an
// error, so the tests notice when it drifts.
func renderConf(shipped string, subs map[string]string) (string, error) {
	seen := map[string]bool{}
	var out strings.Builder
	for line := range strings.Lines(shipped) {
		trimmed := strings.TrimSpace(line)
		key, _, _ := strings.Cut(trimmed, " ")
		if _, ok := subs[trimmed]; ok {
			key = trimmed
		}
		if v, ok := subs[key]; ok && !strings.HasPrefix(trimmed, "#") {
			seen[key] = true
			if v == "" {
				continue
			}
			name, _, _ := strings.Cut(key, " ")
			line = name + " " + v + "\n"
		}
		out.WriteString(line)
	}
	for k := range subs {
		if !seen[k] {
			return "", fmt.Errorf("brokertest: shipped mosquitto.conf has no %s line", k)
		}
	}
	return out.String(), nil
}

// shareWithBrokerUser lets the broker read what it needs. Started as root,
// Mosquitto reads its config and opens the listener, then drops to the user
// "mosquitto" (or "nobody" if that does not exist) before it loads the ACL,
// the server key and the persistence database. Running the test broker as
// root ("user root") would avoid this but makes a network-facing daemon keep
// root; instead the broker's user gets exactly what production gives it: the
// server key and the data directory become its own, and the directories on
// the way get group-execute for its group (no listing). The client keys stay
// root's. As any other user Mosquitto keeps running as that user and nothing
// needs changing.
func shareWithBrokerUser(dir, serverKey, dataDir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("mosquitto")
	if err != nil {
		if u, err = user.Lookup("nobody"); err != nil {
			return fmt.Errorf("brokertest: neither user mosquitto nor nobody exists: %w", err)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, p := range []string{serverKey, dataDir} {
		if err := os.Chown(p, uid, gid); err != nil {
			return fmt.Errorf("brokertest: %w", err)
		}
	}
	// t.TempDir() is <tmp>/<TestName><n>/<nnn>, each 0700.
	tmp := filepath.Clean(os.TempDir())
	for d := dir; d != tmp && d != filepath.Dir(d); d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("brokertest: %w", err)
		}
		if fi.Mode().Perm()&0o001 != 0 {
			continue
		}
		if err := os.Chown(d, -1, gid); err != nil {
			return fmt.Errorf("brokertest: %w", err)
		}
		if err := os.Chmod(d, fi.Mode().Perm()|0o010); err != nil {
			return fmt.Errorf("brokertest: %w", err)
		}
	}
	return nil
}

// freePorts holds every listener open until all n are chosen: picked one
// at a time, the kernel may hand out the same just-closed port twice, and
// Mosquitto then fails with "Address already in use" (seen in CI).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("brokertest: free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Addr is the broker's host:port.
func (b *Broker) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }

// URL is the broker URL for link.Options.Broker.
func (b *Broker) URL() string { return "mqtts://" + b.Addr() }

// SharedAddr is host:port of the listener for enrolling units and the fleet
// manager (shipped as 8884), where clients choose their client ids (each
// must begin with ClientIDPrefix).
func (b *Broker) SharedAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.sharedPort))
}

// SharedURL is SharedAddr as a broker URL: fleetctl's --broker, a unit's
// fleet.enrol_broker.
func (b *Broker) SharedURL() string { return "mqtts://" + b.SharedAddr() }

// ClientIDPrefix is what the shipped mosquitto.conf requires every client id
// a client sends to begin with (clientid_prefixes).
const ClientIDPrefix = link.ClientIDPrefix

// CAFile is the test fleet CA.
func (b *Broker) CAFile() string { return b.pki.CAFile }

// CertPool holds the test fleet CA.
func (b *Broker) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(b.pki.ca.Cert)
	return p
}

// CA is the fleet CA that issued the broker's and the clients'
// certificates (Options.CA or the throwaway one). A certificate revoked
// with it is refused from the next Restart.
func (b *Broker) CA() *ca.CA { return b.pki.ca }

// Admin is the fleet manager's identity.
func (b *Broker) Admin() Identity { return b.ids[b.admin] }

// Identity returns the client certificate of name (a unit, an Other or the
// admin).
func (b *Broker) Identity(name string) Identity {
	id, ok := b.ids[name]
	if !ok {
		b.t.Fatalf("brokertest: no identity %q", name)
	}
	return id
}

// TLSConfig is a client TLS config for name.
func (b *Broker) TLSConfig(name string) *tls.Config {
	id := b.Identity(name)
	cert, err := tls.LoadX509KeyPair(id.CertFile, id.KeyFile)
	if err != nil {
		b.t.Fatalf("brokertest: %v", err)
	}
	return &tls.Config{RootCAs: b.CertPool(), Certificates: []tls.Certificate{cert}}
}

// Log is Mosquitto's output so far, across restarts.
func (b *Broker) Log() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.log.String()
}

type lockedWriter struct{ b *Broker }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return w.b.log.Write(p)
}

// Restart starts Mosquitto again on the same port with the same data (it
// is a no-op if it is running) and waits until it accepts TLS connections.
func (b *Broker) Restart() {
	b.t.Helper()
	b.mu.Lock()
	if b.cmd != nil {
		b.mu.Unlock()
		return
	}
	if err := b.pki.writeCRL(b.crl); err != nil {
		b.mu.Unlock()
		b.t.Fatal(err)
	}
	cmd := exec.Command(b.mosq, "-c", b.conf)
	cmd.Stdout = lockedWriter{b}
	cmd.Stderr = lockedWriter{b}
	if err := cmd.Start(); err != nil {
		b.mu.Unlock()
		b.t.Fatalf("brokertest: start mosquitto: %v", err)
	}
	done := make(chan struct{})
	b.cmd, b.done = cmd, done
	b.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(done)
	}()

	deadline := time.Now().Add(15 * time.Second)
	for {
		err := b.probe()
		if err == nil {
			return
		}
		select {
		case <-done:
			b.mu.Lock()
			b.cmd = nil
			b.mu.Unlock()
			b.t.Fatalf("brokertest: mosquitto exited: %s\n%s", cmd.ProcessState, b.Log())
		default:
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("brokertest: mosquitto not accepting TLS on %s: %v\n%s", b.Addr(), err, b.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// probe completes a TLS handshake as the admin.
func (b *Broker) probe() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	d := tls.Dialer{Config: b.clientTLS}
	for _, addr := range []string{b.Addr(), b.SharedAddr()} {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		c.Close()
	}
	return nil
}

// Stop stops Mosquitto (SIGTERM, so it saves its database as on a clean
// shutdown; SIGKILL after 10 s). Restart brings it back.
func (b *Broker) Stop() {
	b.mu.Lock()
	cmd, done := b.cmd, b.done
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Kill stops Mosquitto with SIGKILL: a crash, so nothing since its last
// autosave is kept.
func (b *Broker) Kill() {
	b.mu.Lock()
	cmd, done := b.cmd, b.done
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// SetACL replaces the broker's ACL file and reloads it (SIGHUP), as a
// fleet manager does after fleetctl acl.
func (b *Broker) SetACL(text string) {
	b.t.Helper()
	if err := os.WriteFile(filepath.Join(b.dir, "acl"), []byte(text), 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.mu.Lock()
	cmd := b.cmd
	b.mu.Unlock()
	if cmd != nil {
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			b.t.Fatalf("brokertest: reload ACL: %v", err)
		}
	}
}

// Running reports whether Mosquitto is running.
func (b *Broker) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return false
	}
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// Client connects a paho client with name's certificate to the shared
// listener (SharedAddr), with client id konsult/test/<name>-<random> unless
// a ClientOption sets one (which gets ClientIDPrefix if it lacks it), and
// disconnects it when the test ends. It fails the test if the first
// connection takes more than 10 s. UnitClient connects to the units'
// listener instead.
func (b *Broker) Client(t testing.TB, name string, opts ...func(*mqtt.ClientOptions)) mqtt.Client {
	t.Helper()
	return b.connect(t, b.SharedAddr(), name, opts)
}

// UnitClient is Client on the enrolled units' listener (Addr), where the
// broker replaces the client id with the certificate's CN.
func (b *Broker) UnitClient(t testing.TB, name string, opts ...func(*mqtt.ClientOptions)) mqtt.Client {
	t.Helper()
	return b.connect(t, b.Addr(), name, opts)
}

func (b *Broker) connect(t testing.TB, addr, name string, opts []func(*mqtt.ClientOptions)) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions()
	o.AddBroker("ssl://" + addr)
	o.SetTLSConfig(b.TLSConfig(name))
	o.SetClientID(ClientIDPrefix + "test/" + name + "-" + rand.Text()[:8])
	o.SetProtocolVersion(4)
	o.SetConnectTimeout(5 * time.Second)
	for _, f := range opts {
		f(o)
	}
	if !strings.HasPrefix(o.ClientID, ClientIDPrefix) {
		o.SetClientID(ClientIDPrefix + "test/" + o.ClientID)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("brokertest: %s: no CONNACK within 10 s", name)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("brokertest: %s: connect: %v", name, err)
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}
