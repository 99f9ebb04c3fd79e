package agent_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/provisioning/audit"
	"github.com/konsult/konsult/provisioning/fleet"
)

// TestAuditRecordsWhatTheAgentDecides: configs applied and rejected, a
// command, a call with a secret in its reason, a fault: each is in the
// audit log, the chain verifies, and no secret is in it.
func TestAuditRecordsWhatTheAgentDecides(t *testing.T) {
	u := newUnit(t)
	c, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	log, err := agent.OpenAudit(u.dir, filepath.Join(u.dir, "identity"), nil, c)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	u.opts.Audit = log
	u.opts.CallE2EE = func() string { return "false" }
	u.start()
	const secret = "s3cr3t-Passw0rd"
	u.push(cfg{version: 1, target: dev, toml: fmt.Sprintf("[conference]\napi_secret = %q\n", secret)})
	u.nextApplied(5 * time.Second)
	u.WaitEvent(fleet.EventConfigApplied, 5*time.Second)
	u.push(cfg{version: 2, target: dev, toml: "[conference]\nbad = 1\n"})
	u.WaitEvent(fleet.EventConfigRejected, 5*time.Second)
	u.Publish(topics.DeviceCmd(unitID), false, u.command(fleet.CommandReportNow, nil, time.Now(), time.Now().Add(time.Minute), ""))
	u.WaitEvent(fleet.EventCommandDone, 5*time.Second)
	yes := true
	u.app.emit(appliance.Event{Type: "call", Detail: "joined", Meeting: "m-7", E2EE: &yes})
	u.app.emit(appliance.Event{Type: "call", Detail: "left", Meeting: "m-7", Reason: "server said " + secret + " at https://u:pw@sfu.example/x?access_token=abc"})
	u.WaitEvent(fleet.EventCallLeft, 5*time.Second)
	u.app.emit(appliance.Event{Type: "fault", Detail: "shutter", Reason: "stuck"})
	u.WaitEvent(fleet.EventShutterFault, 5*time.Second)

	var recs []audit.Record
	eventually(t, 5*time.Second, "the fault in the audit log", func() bool {
		recs = log.Records()
		return recs[len(recs)-1].Kind == audit.KindFault
	})
	got := map[string]audit.Record{}
	for _, r := range recs {
		got[r.Kind] = r
	}
	for _, k := range []string{audit.KindChainStarted, audit.KindStarted, audit.KindConfigApplied, audit.KindConfigRejected, audit.KindCommand, audit.KindCallJoined, audit.KindCallLeft, audit.KindFault} {
		if _, ok := got[k]; !ok {
			t.Errorf("no %s record in %v", k, recs)
		}
	}
	if r := got[audit.KindConfigApplied]; r.Fields["target"] != "device:"+unitID || r.Fields["version"] != "1" {
		t.Errorf("config_applied record %+v", r.Fields)
	}
	if r := got[audit.KindCallJoined]; r.Fields["meeting"] != "m-7" || r.Fields["e2ee"] != "true" {
		t.Errorf("call_joined record %+v", r.Fields)
	}
	if r := got[audit.KindCommand]; r.Fields["name"] != fleet.CommandReportNow || r.Fields["result"] != "done" {
		t.Errorf("command record %+v", r.Fields)
	}
	whole := ""
	for _, r := range recs {
		whole += string(r.Line()) + "\n"
	}
	for _, bad := range []string{secret, "pw@", "access_token"} {
		if strings.Contains(whole, bad) {
			t.Errorf("the audit log holds %q:\n%s", bad, whole)
		}
	}
	if res := audit.Verify(recs, log.Device()); !res.OK() {
		t.Fatalf("chain: %v", res.Problem)
	}
	// The reported document carries the high-water mark.
	eventually(t, 5*time.Second, "reported audit mark", func() bool {
		rep := u.agent.Reported().Audit
		return rep != nil && rep.Head == recs[len(recs)-1].Seq && rep.Sent == rep.Head
	})
}
