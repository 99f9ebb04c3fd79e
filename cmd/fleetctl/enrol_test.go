package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/konsult/konsult/internal/brokertest"
	"github.com/konsult/konsult/provisioning/ca"
	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/identity"
	"github.com/konsult/konsult/provisioning/link"
	"github.com/konsult/konsult/provisioning/manager"
)

// enrolFleet is a fleet CA, real Mosquitto with the shipped config, and the
// enrolment credential every image ships.
type enrolFleet struct {
	t                   *testing.T
	ca                  *ca.CA
	b                   *brokertest.Broker
	enrolCert, enrolKey string
}

func newEnrolFleet(t *testing.T, units ...string) *enrolFleet {
	t.Helper()
	realClock(t)
	noSettings(t)
	c, err := ca.Init(filepath.Join(t.TempDir(), "fleet-ca"), "")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := c.IssueWithKey(ca.KindEnrol, manager.EnrolCN, nil, filepath.Join(t.TempDir(), "enrol"))
	if err != nil {
		t.Fatal(err)
	}
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "fleet.pub"), fleet.FormatPublicKey(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	us := map[string][]string{}
	for _, u := range units {
		us[u] = nil
	}
	return &enrolFleet{t: t, ca: c, b: brokertest.Start(t, brokertest.Options{CA: c, Units: us}), enrolCert: cert, enrolKey: key}
}

func (f *enrolFleet) fleetctl(args ...string) (string, string, error) {
	f.t.Helper()
	a := f.b.Admin()
	if args[0] == "enrol" {
		args = append(args, "--ca-dir", f.ca.Dir)
	}
	args = append(args, "--broker", f.b.SharedURL(), "--ca", f.b.CAFile(), "--cert", a.CertFile, "--cert-key", a.KeyFile)
	var o, e bytes.Buffer
	err := run(context.Background(), args, &o, &e)
	return o.String(), e.String(), err
}

// publishAs publishes a retained message with cert/key on the shared
// listener under the client id id.
func (f *enrolFleet) publishAs(certFile, keyFile, addr, id, topic string, payload []byte) {
	f.t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		f.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.ca.CertPEM())
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(id).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		f.t.Fatalf("connect as %s: %v", id, tok.Error())
	}
	defer c.Disconnect(50)
	if tok := c.Publish(topic, 1, true, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		f.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// request is what a fresh unit with its own key sends for code.
func (f *enrolFleet) request(code string, model, version string) enrol.Request {
	f.t.Helper()
	k, _, err := identity.LoadOrCreateKey(filepath.Join(f.t.TempDir(), "identity"))
	if err != nil {
		f.t.Fatal(err)
	}
	id, err := identity.DeviceID(k.Signer().Public())
	if err != nil {
		f.t.Fatal(err)
	}
	csr, err := identity.NewCSR(k, id)
	if err != nil {
		f.t.Fatal(err)
	}
	now := time.Now()
	return enrol.Request{DeviceID: id, CSR: string(csr), Model: model, Version: version,
		ClaimProof: enrol.ClaimProof(code, id, string(csr)), FirstRequested: now, SentAt: now}
}

func (f *enrolFleet) send(r enrol.Request) {
	f.t.Helper()
	b, _ := json.Marshal(r)
	t := link.Topics{}
	f.publishAs(f.enrolCert, f.enrolKey, f.b.SharedAddr(), t.EnrolClientID(r.DeviceID), t.EnrolRequest(r.DeviceID), b)
}

func (f *enrolFleet) newCode() string {
	f.t.Helper()
	code := enrol.NewClaimCode()
	if err := f.ca.Update(func(l *ca.Ledger) error {
		l.ClaimCodes = append(l.ClaimCodes, ca.ClaimCode{Code: code, Created: time.Now()})
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
	return code
}

// hostile is what a unit or an enrolment request could write to take over
// the fleet manager's terminal: an OSC title change, a screen clear, a
// forged line, a bidi override and a C1 CSI.
const hostile = "x\x1b]0;pwned\x07\x1b[2J\nFORGED ku-fake approved\u202egnp.exe\u009b31m"

// terminalSafe fails if out holds anything a terminal would act on, or more
// lines than want.
func terminalSafe(t *testing.T, what, out string, lines int) {
	t.Helper()
	for _, r := range out {
		if (r < 0x20 && r != '\n') || (r >= 0x7f && r <= 0x9f) || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) {
			t.Errorf("%s printed %U: %q", what, r, out)
			return
		}
	}
	if n := strings.Count(out, "\n"); lines > 0 && n != lines {
		t.Errorf("%s printed %d lines, want %d (a newline from a unit split a row):\n%s", what, n, lines, out)
	}
	if lines > 0 && strings.Contains(out, "\nFORGED") {
		t.Errorf("%s let a unit forge a line:\n%s", what, out)
	}
}

func TestEnrolListCleansWhatRequestsSay(t *testing.T) {
	f := newEnrolFleet(t)
	r := f.request(f.newCode(), "model "+hostile, "1.0"+hostile)
	r.Refusal = &enrol.Refusal{Reason: "ca_changed" + hostile, Message: "refused" + hostile}
	f.send(r)
	// Mosquitto refuses control characters in client ids and topics, but
	// not bidi overrides: a request whose id no key backs, under one.
	bad := enrol.Request{DeviceID: "ku-\u202eexe.gnp", Model: hostile}
	b, _ := json.Marshal(bad)
	tp := link.Topics{}
	f.publishAs(f.enrolCert, f.enrolKey, f.b.SharedAddr(), tp.EnrolClientID(bad.DeviceID), tp.EnrolRequest(bad.DeviceID), b)

	out, errOut, err := f.fleetctl("enrol", "list")
	if err != nil {
		t.Fatalf("enrol list: %v\n%s", err, errOut)
	}
	terminalSafe(t, "enrol list", out, 3)
	terminalSafe(t, "enrol list (stderr)", errOut, 0)
	if !strings.Contains(out, r.DeviceID) || !strings.Contains(out, "pwned") {
		t.Fatalf("enrol list lost the request's text instead of cleaning it:\n%s", out)
	}
	js, _, err := f.fleetctl("enrol", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	terminalSafe(t, "enrol list --json", js, 0)
}

func TestStatusCleansWhatUnitsReport(t *testing.T) {
	const id = "room-hostilehostilehostile"
	f := newEnrolFleet(t, id)
	rep, _ := json.Marshal(fleet.ReportedDoc{Device: "room-hostilehostilehostile", Groups: []string{"ward" + hostile}, At: time.Now()})
	st, _ := json.Marshal(fleet.StatusDoc{Online: true, State: "idle" + hostile, Version: "9.9" + hostile, At: time.Now()})
	u := f.b.Identity(id)
	tp := link.Topics{}
	f.publishAs(u.CertFile, u.KeyFile, f.b.Addr(), link.UnitClientID(id), tp.Reported(id), rep)
	f.publishAs(u.CertFile, u.KeyFile, f.b.Addr(), link.UnitClientID(id), tp.Status(id), st)
	out, errOut, err := f.fleetctl("status")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, errOut)
	}
	terminalSafe(t, "status", out, 2)
	if !strings.Contains(out, "pwned") {
		t.Fatalf("status did not show the unit's report:\n%s", out)
	}
}

// Issue 14, finding 5: someone who read the claim code off the card
// before first boot races the real unit with it.
func TestEnrolContestedClaimCode(t *testing.T) {
	f := newEnrolFleet(t)
	code := f.newCode()
	real, thief := f.request(code, "pi4", "1.0"), f.request(code, "pi4", "1.0")
	f.send(real)
	f.send(thief)

	out, errOut, err := f.fleetctl("enrol", "list")
	if err != nil {
		t.Fatalf("enrol list: %v\n%s", err, errOut)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if !strings.Contains(line, "contested") {
			t.Errorf("a request with a contested claim code is not marked:\n%s", out)
		}
	}
	if _, _, err := f.fleetctl("enrol", "approve", real.DeviceID); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("approve of a contested code: err=%v, want a refusal naming --force", err)
	}
	if l, _ := f.ca.Ledger(); l.ClaimCodes[0].UsedBy != "" {
		t.Fatalf("the refused approval spent the claim code: %+v", l.ClaimCodes[0])
	}
	if out, errOut, err := f.fleetctl("enrol", "approve", real.DeviceID, "--force", "--unit-broker", f.b.URL()); err != nil {
		t.Fatalf("approve --force: %v\n%s%s", err, out, errOut)
	}
	out, _, _ = f.fleetctl("enrol", "list")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, thief.DeviceID) && !strings.Contains(line, enrol.ReasonUsedCode) {
			t.Errorf("the other request after approval: %q, want %s", line, enrol.ReasonUsedCode)
		}
	}
}

// Issue 18, item 2: enrol approve --acl-out writes the broker's ACL, with
// the unit and its groups, before the approval leaves: if it cannot, no
// approval is sent.
func TestApproveWritesTheACLFirst(t *testing.T) {
	f := newEnrolFleet(t)
	r := f.request(f.newCode(), "pi4", "1.0")
	f.send(r)
	response := link.Topics{}.EnrolResponse(r.DeviceID)

	bad := filepath.Join(t.TempDir(), "no-such-dir", "acl")
	if _, _, err := f.fleetctl("enrol", "approve", r.DeviceID, "--group", "ward-3", "--acl-out", bad, "--unit-broker", f.b.URL()); err == nil || !strings.Contains(err.Error(), "not sent") {
		t.Fatalf("approve with an ACL it cannot write: %v", err)
	}
	if got := retainedUnder(t, f.b, response); got[response] {
		t.Fatal("the approval was published although the ACL was not written")
	}

	acl := filepath.Join(t.TempDir(), "acl")
	out, errOut, err := f.fleetctl("enrol", "approve", r.DeviceID, "--group", "ward-3", "--acl-out", acl, "--unit-broker", f.b.URL())
	if err != nil {
		t.Fatalf("approve --acl-out: %v\n%s%s", err, out, errOut)
	}
	text, err := os.ReadFile(acl)
	if err != nil {
		t.Fatal(err)
	}
	want, err := manager.RenderACL(f.ca, "")
	if err != nil {
		t.Fatal(err)
	}
	if string(text) != want || !strings.Contains(want, r.DeviceID) || !strings.Contains(want, "ward-3") {
		t.Errorf("the ACL written is not fleetctl acl's with the unit in it:\n%s", text)
	}
	if aclOut := mustRun(t, "acl", "--ca-dir", f.ca.Dir); aclOut != string(text) {
		t.Errorf("--acl-out and fleetctl acl differ")
	}
	if got := retainedUnder(t, f.b, response); !got[response] {
		t.Error("no approval on the broker after approve --acl-out")
	}
	if !strings.Contains(out, "reload") {
		t.Errorf("approve --acl-out does not say to reload the broker:\n%s", out)
	}
}
