package report_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/appliance/report"
	"github.com/konsult/konsult/provisioning/fleet"
)

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func journald(t *testing.T) []string {
	return []string{filepath.Join(repoRoot(t), "image/rootfs/etc/systemd/journald.conf.d/konsult.conf")}
}

// configured is a unit on a LiveKit server in the Netherlands, with
// secrets set, as an installer writes it.
const configured = `
[conference]
connector = "livekit"
url = "https://sfu.clinic-north.example"
room = "room-1"
identity = "unit-1"
api_key = "APIk3yZZ"
api_secret = "s3cr3t-verylongsecretvalue-0123456789abcdef"
allowed_hosts = ["sfu.clinic-north.example"]
ice_servers = [{urls = ["turns:turn.clinic-north.example:443?transport=tcp"], username = "turnuser", credential = "turnpa55"}]

[privacy]
regions = ["eu-nl"]
host_regions = {"sfu.clinic-north.example" = "eu-nl", "sfu.us.example" = "us-east"}

[audit]
retention = "720h"

[fleet]
broker = "mqtts://broker.clinic-north.example:8883"
device_id = "ku-abcdefghijklmnopqrst"
fleet_key = "fleet.pub"
`

func load(t *testing.T, text string) *config.Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "roomd.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func build(t *testing.T, c *config.Config) report.Report {
	return report.Build(report.Source{Config: c, Unit: "ku-abcdefghijklmnopqrst", Version: "1.2.3", Generation: 4,
		Checks:   []fleet.DoctorCheck{{Name: "shutter", OK: true, Detail: "closed, both sensors agree"}, {Name: "led", OK: false, Detail: "no PWM"}},
		ChecksAt: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC), JournaldFiles: journald(t), Now: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)})
}

func TestReportNamesServerRegionE2EEAndRetention(t *testing.T) {
	r := build(t, load(t, configured))
	md, html := r.Markdown(), r.HTML()
	for _, want := range []string{
		"sfu.clinic-north.example", "| declared region | eu-nl |", "end-to-end encryption | **off** (flagged)",
		"DTLS-SRTP", "broker.clinic-north.example", "30 days", "journald MaxRetentionSec | 14day",
		"turn.clinic-north.example", "`identity.serial`", "`audit.sent`", "| led | **FAIL** | no PWM |",
		"| software version | 1.2.3 |", "| config generation | 4 |", "cmd/roomd.TestFleetSecretsNeverLeave",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q", want)
		}
	}
	for _, want := range []string{"<!DOCTYPE html>", "@media print", "sfu.clinic-north.example", "eu-nl", "14day"} {
		if !strings.Contains(html, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
	if regexp.MustCompile(`(?i)<(link|script|img)\b|src=|href=`).MatchString(html) {
		t.Error("the HTML page loads something: it must be self-contained")
	}
	if strings.Contains(md, "outside the clinic") {
		t.Errorf("an in-region server is flagged:\n%s", md)
	}
	if os.Getenv("KONSULT_REPORT_OUT") != "" {
		os.WriteFile(filepath.Join(os.Getenv("KONSULT_REPORT_OUT"), "report.md"), []byte(md), 0o644)
		os.WriteFile(filepath.Join(os.Getenv("KONSULT_REPORT_OUT"), "report.html"), []byte(html), 0o644)
	}
}

// TestConfigChangeChangesTheReport moves the unit to a server outside the
// clinic's regions: the report says so, from the config alone.
func TestConfigChangeChangesTheReport(t *testing.T) {
	before := build(t, load(t, configured)).Markdown()
	moved := strings.ReplaceAll(configured, `url = "https://sfu.clinic-north.example"`, `url = "https://sfu.us.example"`)
	moved = strings.Replace(moved, `allowed_hosts = ["sfu.clinic-north.example"]`, `allowed_hosts = ["sfu.us.example"]`, 1)
	moved = strings.Replace(moved, `retention = "720h"`, `retention = "2160h"`, 1)
	after := build(t, load(t, moved))
	md := after.Markdown()
	if md == before {
		t.Fatal("the report did not change with the config")
	}
	flagged := false
	for _, f := range after.Flags {
		if strings.Contains(f, "sfu.us.example is in region us-east, outside the clinic's declared regions (eu-nl)") {
			flagged = true
		}
	}
	if !flagged {
		t.Fatalf("out-of-region server not flagged: %q", after.Flags)
	}
	if !strings.Contains(md, "| retention on the unit | 90 days") || !strings.Contains(before, "| retention on the unit | 30 days") {
		t.Error("the audit retention in the report did not follow the config")
	}
	// A host with no region at all is flagged too.
	undeclared := strings.Replace(moved, `"sfu.us.example" = "us-east"`, `"other.example" = "eu-nl"`, 1)
	if r := build(t, load(t, undeclared)); !strings.Contains(strings.Join(r.Flags, "\n"), "sfu.us.example has no declared region") {
		t.Fatalf("undeclared region not flagged: %q", r.Flags)
	}
}

var leaks = regexp.MustCompile(`(?i)s3cr3t|APIk3yZZ|turnpa55|turnuser|[a-z]+://[^/\s]*:[^/\s]*@|eyJ[a-zA-Z0-9_-]{10,}|access_token|unit-1\b`)

// TestReportLeaksNoSecret: the report of a unit whose config holds an API
// secret, key, TURN credentials and a participant identity names none.
func TestReportLeaksNoSecret(t *testing.T) {
	r := build(t, load(t, configured))
	for name, text := range map[string]string{"markdown": r.Markdown(), "html": r.HTML()} {
		if m := leaks.FindString(text); m != "" {
			t.Errorf("%s report holds %q", name, m)
		}
	}
}

func TestEveryTelemetryFieldHasAPurpose(t *testing.T) {
	fields := report.TelemetryFields()
	if len(fields) < 20 {
		t.Fatalf("only %d fields found by reflection", len(fields))
	}
	for _, f := range fields {
		if f.Purpose == "" {
			t.Errorf("%s.%s leaves the unit with no reviewed purpose: add it to fieldPurpose (or drop the field)", f.Doc, f.Name)
		}
	}
}

// TestNoRecordingKey: the schema has no key that would record, store or
// save media.
func TestNoRecordingKey(t *testing.T) {
	bad := regexp.MustCompile(`(?i)record|recording|save|dump|capture_file|archive`)
	var walk func(prefix string, ty reflect.Type)
	walk = func(prefix string, ty reflect.Type) {
		for i := 0; i < ty.NumField(); i++ {
			f := ty.Field(i)
			name := prefix + strings.Split(f.Tag.Get("toml"), ",")[0]
			if bad.MatchString(name) {
				t.Errorf("config key %s looks like a recording feature", name)
			}
			ft := f.Type
			for ft.Kind() == reflect.Slice || ft.Kind() == reflect.Map || ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				walk(name+".", ft)
			}
		}
	}
	walk("", reflect.TypeOf(config.Config{}))
}

// TestMediaPathWritesNoFiles: no non-test source of the media path
// (media/…) opens a file for writing.
func TestMediaPathWritesNoFiles(t *testing.T) {
	root := filepath.Join(repoRoot(t), "media")
	banned := map[string]bool{"os.Create": true, "os.WriteFile": true, "os.CreateTemp": true, "os.OpenFile": true, "ioutil.WriteFile": true}
	n := 0
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		fs := token.NewFileSet()
		f, err := parser.ParseFile(fs, p, nil, 0)
		if err != nil {
			return err
		}
		n++
		src, _ := os.ReadFile(p)
		ast.Inspect(f, func(x ast.Node) bool {
			if call, ok := x.(*ast.CallExpr); ok {
				// os.OpenFile of a device node (V4L2, the GPU) read-write
				// is fine; creating, truncating or appending is a file.
				if sel, ok := call.Fun.(*ast.SelectorExpr); ok && len(call.Args) > 1 {
					if id, ok := sel.X.(*ast.Ident); ok && id.Name == "os" && sel.Sel.Name == "OpenFile" {
						flags := string(src[fs.Position(call.Args[1].Pos()).Offset:fs.Position(call.Args[1].End()).Offset])
						if regexp.MustCompile(`O_CREATE|O_TRUNC|O_APPEND|O_WRONLY`).MatchString(flags) {
							t.Errorf("%s: os.OpenFile(%s) on the media path", fs.Position(call.Pos()), flags)
						}
						return true
					}
				}
			}
			sel, ok := x.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); ok && banned[id.Name+"."+sel.Sel.Name] && sel.Sel.Name != "OpenFile" {
				t.Errorf("%s: %s.%s on the media path", fs.Position(sel.Pos()), id.Name, sel.Sel.Name)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 20 {
		t.Fatalf("only %d media sources read", n)
	}
}

// TestNamedTestsExist: every test the report names is in the repository.
func TestNamedTestsExist(t *testing.T) {
	r := build(t, load(t, configured))
	for _, c := range r.NeverStored {
		for _, name := range c.Tests {
			pkg, fn, _ := strings.Cut(name, ".")
			found := false
			files, _ := filepath.Glob(filepath.Join(repoRoot(t), pkg, "*_test.go"))
			for _, f := range files {
				b, _ := os.ReadFile(f)
				if strings.Contains(string(b), "func "+fn+"(t *testing.T)") {
					found = true
				}
			}
			if !found {
				t.Errorf("the report names %s, which does not exist", name)
			}
		}
	}
}

func TestOfflineReportSaysChecksDidNotRun(t *testing.T) {
	r := report.Build(report.Source{Config: load(t, ""), JournaldFiles: []string{filepath.Join(t.TempDir(), "none.conf")}})
	md := r.Markdown()
	for _, want := range []string{"not run", "none configured", "no Konsult journald drop-in found", "the fleet is off"} {
		if !strings.Contains(md, want) {
			t.Errorf("offline report lacks %q:\n%s", want, md)
		}
	}
}

// TestE2EEFollowsTheConfig: with conference.e2ee_key_file the report says
// end-to-end encryption is on and who can decrypt, and no longer flags it.
func TestE2EEFollowsTheConfig(t *testing.T) {
	key := filepath.Join(t.TempDir(), "e2ee.key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	on := strings.Replace(configured, `room = "room-1"`, "room = \"room-1\"\ne2ee_key_file = "+strconv.Quote(key), 1)
	r := build(t, load(t, on))
	md := r.Markdown()
	if !strings.Contains(md, "| end-to-end encryption | on for every call") || !strings.Contains(md, "only the participants holding that key") {
		t.Fatalf("E2EE on not reported:\n%s", md)
	}
	for _, f := range r.Flags {
		if strings.Contains(f, "end-to-end encryption is off") {
			t.Fatalf("E2EE on, still flagged: %q", r.Flags)
		}
	}
	if strings.Contains(md, key) {
		t.Error("the report names the key file")
	}
	if report.E2EE(load(t, configured)) != "false" {
		t.Error("a unit with an API key and no key file says it encrypts end to end")
	}
}
