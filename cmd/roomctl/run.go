package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/localapi"
	"github.com/konsult/konsult/provisioning/fleet"
)

const usage = `usage: roomctl [--socket PATH | --http URL] COMMAND [ARGS]

Commands:
  status [--json]            the unit's state, privacy gate, LED, shutter and pins
  watch [--json]             live events until Ctrl-C
  press BUTTON               press and release a button (simulated board): join, leave, privacy, mute
  hold BUTTON DURATION       hold a button, e.g. "hold privacy 3s" (simulated board)
  do ACTION                  ask for an action as the fleet would: join, leave, privacy, privacy_on,
                             privacy_off, mute, mute_on, mute_off
  fault NAME on|off          inject a fault (simulated board): stuck_shutter, sensor_disagree,
                             bouncy_buttons, shutter_drift, join_fails, call_drop, camera_lost
  doctor [--json]            check the wiring; each failure names the pin and the fix
  enrol CODE                 give the unit its claim code (from the fleet manager) to join the fleet
  privacy-report [--html] [--config FILE] [--out FILE]
                             the privacy report for the data protection officer (Markdown, or a
                             print-ready HTML page): from the running unit, or offline from a config file
  audit verify|show [--file FILE] [--unit ID]
                             check the unit's signed audit log (names the first edited, deleted,
                             reordered or inserted record), or list it
  factory-reset --yes        wipe the unit's identity and fleet config and start again as a new unit
                             (also: hold PRIVACY and JOIN together for 10 s)
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("roomctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", localapi.DefaultSocket(), "roomd's unix socket")
	httpURL := fs.String("http", "", "roomd's loopback HTTP API instead of the socket, e.g. http://127.0.0.1:8787 (roomd serves it only with api.http or --http; enrol, factory-reset, press, hold and fault need the socket)")
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage, "\nFlags:\n"); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil // the usage is printed; asking for it is not a failure
		}
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command given")
	}
	target := *socket
	if *httpURL != "" {
		target = *httpURL
	}
	c := localapi.Dial(target)
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	jsonOut := len(rest) > 0 && rest[len(rest)-1] == "--json"
	if jsonOut {
		rest = rest[:len(rest)-1]
	}
	switch cmd {
	case "status":
		return status(ctx, c, stdout, jsonOut)
	case "watch":
		return watch(ctx, c, stdout, jsonOut)
	case "press":
		if len(rest) != 1 {
			return errors.New("usage: roomctl press BUTTON (join, leave, privacy, mute)")
		}
		return c.Press(ctx, rest[0], 100)
	case "hold":
		if len(rest) != 2 {
			return errors.New("usage: roomctl hold BUTTON DURATION, e.g. roomctl hold privacy 3s")
		}
		d, err := time.ParseDuration(rest[1])
		if err != nil {
			return fmt.Errorf("hold: %q is not a duration: write it like 3s or 500ms", rest[1])
		}
		return c.Press(ctx, rest[0], int(d.Milliseconds()))
	case "do":
		if len(rest) != 1 {
			return errors.New("usage: roomctl do ACTION")
		}
		return c.Action(ctx, rest[0])
	case "fault":
		if len(rest) != 2 || (rest[1] != "on" && rest[1] != "off") {
			return errors.New("usage: roomctl fault NAME on|off")
		}
		return c.Fault(ctx, rest[0], rest[1] == "on")
	case "doctor":
		return doctor(ctx, c, stdout, jsonOut)
	case "enrol", "enroll":
		if len(rest) != 1 {
			return errors.New("usage: roomctl enrol CODE (the claim code the fleet manager gave you, e.g. 7K2M-QX9P-4RTV-HB3D)")
		}
		if err := c.Enrol(ctx, rest[0]); err != nil {
			return err
		}
		_, err := fmt.Fprintln(stdout, "claim code taken: the unit asks the fleet to approve it; roomctl status shows how it stands")
		return err
	case "privacy-report":
		return privacyReport(ctx, c, rest, stdout, jsonOut)
	case "audit":
		return auditCmd(ctx, c, rest, stdout, jsonOut)
	case "factory-reset":
		if len(rest) != 1 || rest[0] != "--yes" {
			return errors.New("factory-reset wipes the unit's identity, fleet config and queued events: run roomctl factory-reset --yes")
		}
		if err := c.FactoryReset(ctx, true); err != nil {
			return err
		}
		_, err := fmt.Fprintln(stdout, "factory reset under way: roomd wipes the unit and starts again as a new unit")
		return err
	}
	return fmt.Errorf("unknown command %q: see roomctl --help", cmd)
}

type statusView struct {
	appliance.Status
	Version string `json:"version"`
	Board   string `json:"board"`
	Display string `json:"display"`
	// Consultation is the next booked one (ids and times only).
	Consultation *struct {
		ID    string    `json:"id"`
		Start time.Time `json:"start"`
		End   time.Time `json:"end"`
		Due   bool      `json:"due"`
	} `json:"consultation"`
	// Remote is the far end as the unit decrypts and plays it.
	Remote *struct {
		E2EE           bool   `json:"e2ee"`
		DecryptFailure uint64 `json:"e2ee_decrypt_failures"`
	} `json:"remote"`
	Audio *struct {
		AEC       bool    `json:"aec"`
		NS        bool    `json:"ns"`
		AGC       bool    `json:"agc"`
		Active    bool    `json:"active"`
		ERLEKnown bool    `json:"erle_known"`
		ERLE      float64 `json:"erle_db"`
	} `json:"audio"`
	Pins []struct {
		Role   string `json:"role"`
		Line   string `json:"line"`
		Header int    `json:"header"`
		Level  string `json:"level"`
	} `json:"pins"`
	Sim *struct {
		Shutter struct {
			Position string `json:"Position"`
		} `json:"shutter"`
		Faults []string `json:"faults"`
		Media  struct {
			VideoFrames uint64 `json:"video_frames"`
			AudioChunks uint64 `json:"audio_chunks"`
			LastIsSlate bool   `json:"last_is_slate"`
		} `json:"media"`
	} `json:"sim"`
	Fleet *struct {
		Connected bool   `json:"connected"`
		Broker    string `json:"broker"`
		Device    string `json:"device"`
		Enrolment *struct {
			Device    string `json:"device"`
			Enrolment *struct {
				Phase   string `json:"phase"`
				Reason  string `json:"reason"`
				Message string `json:"message"`
			} `json:"enrolment"`
			Serial   string    `json:"certificate_serial"`
			NotAfter time.Time `json:"certificate_not_after"`
			Renewing bool      `json:"renewing"`
			RenewErr string    `json:"last_renewal_error"`
			Revoked  bool      `json:"revoked"`
		} `json:"enrolment"`
		Update *fleet.UpdateReport `json:"update"`
	} `json:"fleet"`
}

func status(ctx context.Context, c *localapi.Client, w io.Writer, jsonOut bool) error {
	if jsonOut {
		var raw json.RawMessage
		if err := c.Status(ctx, &raw); err != nil {
			return err
		}
		_, err := fmt.Fprintf(w, "%s\n", raw)
		return err
	}
	var s statusView
	if err := c.Status(ctx, &s); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("state", fmt.Sprintf("%s (since %s)", s.State, s.Since.Local().Format("15:04:05")))
	row("camera out", yesNo(s.Gate.Video))
	row("mic out", yesNo(s.Gate.Audio))
	row("LED", s.LED)
	row("shutter", s.Shutter)
	row("privacy", onOff(s.Privacy))
	row("mute", onOff(s.Mute))
	if s.Meeting != "" {
		row("meeting", s.Meeting)
	}
	if s.E2EE != nil {
		v := "no (encrypted hop by hop only: the media server can read it)"
		if *s.E2EE {
			v = "yes, safety code " + s.SafetyCode
			if r := s.Remote; r != nil && r.DecryptFailure > 0 {
				v += fmt.Sprintf("; %d far-end frames did not decrypt", r.DecryptFailure)
			}
		}
		row("end-to-end", v)
	}
	for _, f := range s.Faults {
		row("FAULT", f)
	}
	if s.LastError != "" {
		row("last error", s.LastError)
	}
	row("board", s.Board+"  (roomd "+s.Version+")")
	if s.Display != "" {
		row("display", s.Display)
	}
	if c := s.Consultation; c != nil {
		due := ""
		if c.Due {
			due = " (due: JOIN enters it)"
		}
		row("consultation", fmt.Sprintf("%s %s–%s%s", c.ID, c.Start.Local().Format("2006-01-02 15:04"), c.End.Local().Format("15:04"), due))
	}
	if s.Notice != "" {
		row("notice", s.Notice)
	}
	if a := s.Audio; a != nil {
		on := map[bool]string{true: "on", false: "off"}
		line := fmt.Sprintf("echo cancellation %s, noise suppression %s, gain control %s", on[a.AEC], on[a.NS], on[a.AGC])
		if a.AEC && a.ERLEKnown {
			line += fmt.Sprintf("; ERLE %.1f dB over the last call", a.ERLE)
		}
		row("audio", line)
	}
	if f := s.Fleet; f != nil {
		row("fleet", fmt.Sprintf("%s, broker %s", map[bool]string{true: "connected", false: "not connected"}[f.Connected], f.Broker))
		if e := f.Enrolment; e != nil {
			row("device id", e.Device)
			if en := e.Enrolment; en != nil {
				v := en.Phase
				if en.Reason != "" {
					v += " (" + en.Reason + ")"
				}
				if en.Message != "" {
					v += ": " + en.Message
				}
				row("enrolment", v)
			}
			if e.Serial != "" {
				row("certificate", fmt.Sprintf("serial %s, valid until %s", e.Serial, e.NotAfter.Local().Format("2006-01-02 15:04")))
			}
			if e.Renewing {
				row("renewal", "asked the fleet for a new certificate")
			}
			if e.RenewErr != "" {
				row("renewal refused", e.RenewErr)
			}
			if e.Revoked {
				row("REVOKED", "the fleet revoked this unit's certificate")
			}
		}
		if u := f.Update; u != nil {
			updateRows(row, u)
		}
	}
	if s.Sim != nil {
		row("sim shutter", s.Sim.Shutter.Position)
		if len(s.Sim.Faults) > 0 {
			row("sim faults", strings.Join(s.Sim.Faults, ", "))
		}
		row("sim sink", fmt.Sprintf("%d video frames, %d audio chunks sent; last picture is slate: %v",
			s.Sim.Media.VideoFrames, s.Sim.Media.AudioChunks, s.Sim.Media.LastIsSlate))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "ROLE\tLINE\tHEADER\tLEVEL")
	for _, p := range s.Pins {
		h := "-"
		if p.Header != 0 {
			h = strconv.Itoa(p.Header)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Role, p.Line, h, p.Level)
	}
	return tw.Flush()
}

// updateRows shows where the unit's system updates stand.
func updateRows(row func(k, v string), u *fleet.UpdateReport) {
	if u.BootedSlot != "" {
		row("system", fmt.Sprintf("slot %s, version %s", u.BootedSlot, u.BootedVersion))
	}
	if len(u.Slots) > 0 {
		var parts []string
		for _, s := range []string{"A", "B"} {
			if v, ok := u.Slots[s]; ok {
				parts = append(parts, s+" "+v)
			}
		}
		row("slots", strings.Join(parts, ", "))
	}
	if u.Phase != "" && u.Phase != "idle" {
		row("update", fmt.Sprintf("%s %s", u.Phase, u.PendingVersion))
	}
	if u.Deferred {
		row("update", "version "+u.Requested+" waits for the call to end")
	}
	if u.RebootWaiting != "" {
		row("update reboot", "waits for "+u.RebootWaiting)
	}
	if u.LastFailure != "" {
		row("update failed", u.LastFailure)
	}
	if rb := u.RolledBack; rb != nil {
		row("ROLLED BACK", fmt.Sprintf("update to %s (slot %s): %s", rb.Version, rb.Slot, rb.Reason))
	}
}

func yesNo(b bool) string {
	if b {
		return "YES"
	}
	return "no"
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func watch(ctx context.Context, c *localapi.Client, w io.Writer, jsonOut bool) error {
	enc := json.NewEncoder(w)
	return c.Events(ctx, func(ev appliance.Event) bool {
		if jsonOut {
			return enc.Encode(ev) == nil
		}
		_, err := fmt.Fprintln(w, formatEvent(ev))
		return err == nil
	})
}

func formatEvent(ev appliance.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %-13s", ev.At.Local().Format("15:04:05.000"), ev.Type)
	if ev.State != "" {
		fmt.Fprintf(&b, " %s", ev.State)
	}
	if ev.Gate != nil {
		fmt.Fprintf(&b, " camera=%s mic=%s", yesNo(ev.Gate.Video), yesNo(ev.Gate.Audio))
	}
	for _, s := range []string{ev.LED, ev.Detail} {
		if s != "" {
			fmt.Fprintf(&b, " %s", s)
		}
	}
	if ev.Meeting != "" {
		fmt.Fprintf(&b, " meeting=%s", ev.Meeting)
	}
	if ev.E2EE != nil {
		fmt.Fprintf(&b, " e2ee=%t", *ev.E2EE)
	}
	if ev.Reason != "" {
		fmt.Fprintf(&b, " (%s)", ev.Reason)
	}
	return b.String()
}

func doctor(ctx context.Context, c *localapi.Client, w io.Writer, jsonOut bool) error {
	checks, err := c.Doctor(ctx)
	if err != nil {
		return err
	}
	if jsonOut {
		return json.NewEncoder(w).Encode(checks)
	}
	failed := 0
	for _, ch := range checks {
		mark := "ok  "
		switch {
		case !ch.OK:
			mark = "FAIL"
			failed++
		case strings.HasPrefix(ch.Detail, "warning:"):
			mark = "warn" // works, but the fix is worth making
		}
		fmt.Fprintf(w, "%s  %-16s %s\n", mark, ch.Name, ch.Detail)
		if ch.Fix != "" {
			fmt.Fprintf(w, "      %-16s fix: %s\n", "", ch.Fix)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}
