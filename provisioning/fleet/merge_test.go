package fleet

import (
	"reflect"
	"strings"
	"testing"
)

func mustParse(t *testing.T, b []byte) map[string]any {
	t.Helper()
	m, err := ParseTOML(b)
	if err != nil {
		t.Fatalf("result is not TOML: %v\n%s", err, b)
	}
	return m
}

func TestMergeRules(t *testing.T) {
	group := `
[conference]
url = "https://lk.clinic.example"
room = "waiting"
allowed_hosts = ["lk.clinic.example", "backup.clinic.example"]
fps = 30
[pins]
join = "GPIO17"
[log]
level = "info"
[[schedule]]
day = "mon"
`
	device := `
[conference]
room = "cardiology-12"
allowed_hosts = ["lk.clinic.example"]
[pins]
privacy = "GPIO27"
[log]
level = "debug"
[[schedule]]
day = "tue"
`
	out, err := Merge([]byte(group), []byte(device))
	if err != nil {
		t.Fatal(err)
	}
	got := mustParse(t, out)
	want := mustParse(t, []byte(`
[conference]
url = "https://lk.clinic.example"
room = "cardiology-12"
allowed_hosts = ["lk.clinic.example"]
fps = 30
[pins]
join = "GPIO17"
privacy = "GPIO27"
[[schedule]]
day = "tue"
[log]
level = "debug"
`))
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("merged:\n%s\nwant %v", out, want)
	}
}

func TestMergeTypeChangeReplaces(t *testing.T) {
	out, err := Merge([]byte("[a]\nx = 1\n"), []byte("a = 5\n"), []byte("[a]\ny = 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	// Table, then scalar (replaces), then table (replaces the scalar; x is gone).
	if got := mustParse(t, out); !reflect.DeepEqual(got, map[string]any{"a": map[string]any{"y": int64(2)}}) {
		t.Fatalf("got %v", got)
	}
}

func TestMergeInlineTablesMergeDeep(t *testing.T) {
	out, err := Merge([]byte("t = {a = 1, b = {c = 2}}\n"), []byte("[t.b]\nd = 3\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"t": map[string]any{"a": int64(1), "b": map[string]any{"c": int64(2), "d": int64(3)}}}
	if got := mustParse(t, out); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v", got)
	}
}

func TestEffectiveOrder(t *testing.T) {
	id := Identity{Device: "room-12", Groups: []string{"clinic-a", "floor-2"}}
	byTarget := map[string][]byte{
		"group:clinic-a": []byte("[conference]\nroom = \"a\"\nfps = 15\nwidth = 320\n"),
		"group:floor-2":  []byte("[conference]\nroom = \"floor\"\nfps = 25\n"),
		"device:room-12": []byte("[conference]\nroom = \"dev\"\n"),
		"group:other":    []byte("[conference]\nwidth = 1\n"),
		"device:room-13": []byte("[conference]\nwidth = 2\n"),
	}
	out, err := Effective(id, byTarget)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"conference": map[string]any{"room": "dev", "fps": int64(25), "width": int64(320)}}
	if got := mustParse(t, out); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v", got)
	}

	// The group order is the unit's, not the map's: swap it and floor-2 loses.
	id.Groups = []string{"floor-2", "clinic-a"}
	out, _ = Effective(id, byTarget)
	if got := mustParse(t, out); got["conference"].(map[string]any)["fps"] != int64(15) {
		t.Fatalf("with clinic-a last, fps = %v", got["conference"])
	}

	byTarget["group:floor-2"] = []byte("[conference\n")
	if _, err := Effective(id, byTarget); err == nil || !strings.Contains(err.Error(), "group floor-2") {
		t.Fatalf("a broken layer must fail the merge and be named: %v", err)
	}
}

func TestMergeNothing(t *testing.T) {
	out, err := Effective(Identity{Device: "room-12"}, nil)
	if err != nil || len(mustParse(t, out)) != 0 {
		t.Fatalf("no configs: %q, %v", out, err)
	}
}
