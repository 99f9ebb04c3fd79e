package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/internal/farend"
	"github.com/konsult/konsult/internal/screentest"
	"github.com/konsult/konsult/media/e2ee"
	"github.com/konsult/konsult/provisioning/fleetd"
)

// A consultation from fleetd, joined by one press, is end to end
// encrypted: the unit takes K from its sealed grant, a patient page with K
// (livekit-client's own E2EE worker) decodes the unit's video and the unit
// decrypts the patient's; the status says e2ee and shows the safety code
// of K, the joined and left events say e2ee; K appears in no log, event,
// status or error, in any of its forms.
func TestConsultationEndToEndEncrypted(t *testing.T) {
	lk := farend.StartLiveKit(t)
	f := newEnrolFleet(t)
	u, id, _ := f.enrolUnit(t, f.scheduleKeys(t)+fleetConference(lk)+displayConfig(""))
	url, _ := displayURL(t, u)
	sc := screentest.Start(t, url, 1280, 720)
	svc := startFleetd(t, f, lk, "")
	ctx := context.Background()

	now := time.Now()
	a, err := svc.Add(ctx, fleetd.AddRequest{Unit: id, Start: now.Add(5 * time.Minute), End: now.Add(35 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	material, err := svc.Store().E2EEKey(ctx, a.ID)
	if err != nil || len(material) != 32 {
		t.Fatalf("fleetd holds no key for the consultation: %d bytes, %v", len(material), err)
	}
	u.within(30*time.Second, "the consultation due in the status", func(s status) bool {
		return s.Consultation != nil && s.Consultation.ID == a.ID && s.Consultation.Due
	})
	patient := farend.StartFarEnd(t, lk, a.Room, "patient", farend.Publish(), farend.Watch(id), farend.E2EE(material))
	u.press("join")
	joined := u.waitFor("joined", 30*time.Second, func(e appliance.Event) bool { return e.Type == "call" && e.Detail == "joined" })
	if e := joined[len(joined)-1]; e.E2EE == nil || !*e.E2EE {
		t.Fatalf("the joined event does not say e2ee: %+v", e)
	}
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))

	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ps, err := patient.WaitFor(wctx, func(s farend.FarEndStats) bool {
		return s.E2EE && s.VideoFrom == id && s.FPS >= 20
	})
	if err != nil {
		t.Fatalf("the patient with K does not see the room: %+v: %v", ps, err)
	}
	if ps.E2EEErrors != 0 {
		t.Errorf("the patient's worker reported %d decrypt errors with the right key", ps.E2EEErrors)
	}
	st := u.within(20*time.Second, "the patient decrypted on the unit", func(s status) bool {
		return s.Remote != nil && s.Remote.E2EE && s.Remote.E2EEDecrypted > 0
	})
	if st.E2EE == nil || !*st.E2EE {
		t.Fatalf("status e2ee = %v during an end-to-end encrypted call", st.E2EE)
	}
	if want := e2ee.SafetyCode(material); st.SafetyCode != want {
		t.Fatalf("status safety code %q, the contract's for K %q", st.SafetyCode, want)
	}
	// The unit's screen shows the code the patient's page shows.
	screenText(t, sc, "e2ee", "Encrypted end to end · safety code "+e2ee.SafetyCode(material), 10*time.Second)
	raw := rawStatus(t, u)
	u.press("leave")
	left := u.waitFor("left", 20*time.Second, func(e appliance.Event) bool { return e.Type == "call" && e.Detail == "left" })
	if e := left[len(left)-1]; e.E2EE == nil || !*e.E2EE {
		t.Fatalf("the left event does not say e2ee: %+v", e)
	}
	u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
	screenText(t, sc, "e2ee", "", 10*time.Second) // no code once the call is over

	var evs strings.Builder
	for _, e := range append(joined, left...) {
		b, _ := json.Marshal(e)
		evs.Write(b)
	}
	scanForKey(t, material, map[string]string{"roomd's log": u.logs.String(), "roomd's stdout": u.stdout.String(),
		"events": evs.String(), "status": raw})
}

// rawStatus is GET /v1/status as the local API serves it.
func rawStatus(t *testing.T, u *unitUnderTest) string {
	t.Helper()
	b, err := json.Marshal(u.status())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// scanForKey fails if any output holds K raw or in a common encoding.
func scanForKey(t *testing.T, material []byte, outputs map[string]string) {
	t.Helper()
	forms := map[string]string{
		"raw":       string(material),
		"hex":       hex.EncodeToString(material),
		"HEX":       strings.ToUpper(hex.EncodeToString(material)),
		"base64":    base64.StdEncoding.EncodeToString(material),
		"base64url": base64.RawURLEncoding.EncodeToString(material),
	}
	for name, out := range outputs {
		if out == "" {
			continue
		}
		for form, s := range forms {
			if strings.Contains(out, s) {
				t.Errorf("%s holds K (%s)", name, form)
			}
		}
	}
}

// A consultation cannot be encrypted end to end on the WHIP connector: the
// press is refused with the reason, the LED shows the failed join's fault,
// and the unit never enters the room in the clear.
func TestConsultationE2EEImpossibleRefused(t *testing.T) {
	lk := farend.StartLiveKit(t)
	f := newEnrolFleet(t)
	conf := strings.Replace(fleetConference(lk), `connector = "livekit"`, `connector = "livekit-whip"`, 1)
	u, id, _ := f.enrolUnit(t, f.scheduleKeys(t)+conf)
	svc := startFleetd(t, f, lk, "")
	ctx := context.Background()
	now := time.Now()
	a, err := svc.Add(ctx, fleetd.AddRequest{Unit: id, Start: now.Add(5 * time.Minute), End: now.Add(35 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	material, _ := svc.Store().E2EEKey(ctx, a.ID)
	u.within(30*time.Second, "the consultation due in the status", func(s status) bool {
		return s.Consultation != nil && s.Consultation.ID == a.ID && s.Consultation.Due
	})
	u.press("join")
	s := u.within(30*time.Second, "the join refused", func(s status) bool { return s.LastError != "" && s.Sim.Shutter.Position == "closed" })
	if s.LED != "fault" || !strings.Contains(s.LastError, "end-to-end encryption") || s.Sim.Shutter.Position != "closed" {
		t.Fatalf("refused join: LED %s, error %q, shutter %s", s.LED, s.LastError, s.Sim.Shutter.Position)
	}
	evs := u.waitFor("the join's fault event", 10*time.Second, func(e appliance.Event) bool { return e.Type == "fault" && e.Detail == "call" })
	if inRoom(t, lk, a.Room, id, 2*time.Second) {
		t.Fatal("the unit entered an end-to-end consultation without encryption")
	}
	var out strings.Builder
	for _, e := range evs {
		b, _ := json.Marshal(e)
		out.Write(b)
	}
	scanForKey(t, material, map[string]string{"roomd's log": u.logs.String(), "events": out.String(), "status": rawStatus(t, u)})
}

// A stand-alone unit with conference.e2ee_key_file encrypts its calls end
// to end with that key: a far end with the key sees the room; the status
// says e2ee with the key's safety code. A key file others can read stops
// roomd with the fix, and the key is in no output.
func TestStandaloneKeyFile(t *testing.T) {
	lk := farend.StartLiveKit(t)
	material := make([]byte, 32)
	for i := range material {
		material[i] = byte(0xa0 + i)
	}
	keyFile := filepath.Join(t.TempDir(), "e2ee.key")
	if err := os.WriteFile(keyFile, []byte(base64.RawURLEncoding.EncodeToString(material)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := connectorConfig("livekit", lk, "standalone-e2ee", fmt.Sprintf("e2ee_key_file = %q", keyFile))
	dir := t.TempDir()
	confFile := filepath.Join(dir, "roomd.toml")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	err := run(ctx, []string{"--sim", "--socket", filepath.Join(dir, "roomd.sock"), "--http", "off", "--config", confFile}, &stdout, &stderr)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+keyFile) {
		t.Fatalf("roomd with a 0644 key file: %v", err)
	}
	scanForKey(t, material, map[string]string{"error": err.Error(), "stdout": stdout.String(), "log": stderr.String()})

	if err := os.Chmod(keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	u := startUnit(t, conf)
	patient := farend.StartFarEnd(t, lk, "standalone-e2ee", "patient", farend.Publish(), farend.Watch("unit-1"), farend.E2EE(material))
	u.press("join")
	u.waitFor("in_call", 20*time.Second, isState(appliance.InCall))
	farWait(t, patient, "the room decrypted", 30*time.Second, func(s farend.FarEndStats) bool { return s.E2EE && s.VideoFrom == "unit-1" && s.FPS >= 15 })
	st := u.status()
	if st.E2EE == nil || !*st.E2EE || st.SafetyCode != e2ee.SafetyCode(material) {
		t.Fatalf("status e2ee %v code %q", st.E2EE, st.SafetyCode)
	}
	raw := rawStatus(t, u)
	// Someone in the room with another key: their frames do not decrypt,
	// and the call's end says how many were dropped.
	wrong := bytes.Repeat([]byte{0x5a}, len(material))
	farend.StartFarEnd(t, lk, "standalone-e2ee", "intruder", farend.Publish(), farend.E2EE(wrong))
	u.within(30*time.Second, "the intruder's frames counted as not decrypting", func(s status) bool {
		return s.Remote != nil && s.Remote.E2EEDecryptFailures > 0
	})
	u.press("leave")
	evs := u.waitFor("call left", 10*time.Second, func(e appliance.Event) bool { return e.Type == "call" && e.Detail == "left" })
	left := evs[len(evs)-1]
	if left.E2EE == nil || !*left.E2EE || left.DecryptFailures == nil || *left.DecryptFailures == 0 {
		t.Fatalf("the call's end does not say frames failed to decrypt: %+v", left)
	}
	t.Logf("call left: %d far-end frames did not decrypt", *left.DecryptFailures)
	u.waitFor("idle", 10*time.Second, isState(appliance.Idle))
	scanForKey(t, material, map[string]string{"roomd's log": u.logs.String(), "stdout": u.stdout.String(), "status": raw})
}
