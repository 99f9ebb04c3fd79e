package screen

import (
	"strings"
	"testing"

	"github.com/konsult/konsult/appliance"
)

// During an end-to-end encrypted call the screen says so with the safety
// code, in each language; a hop-by-hop call and idle show no code. A join
// refused for want of end-to-end encryption gets its own what-to-do.
func TestViewSafetyCodeAndRefusal(t *testing.T) {
	on, off := true, false
	seen := map[string]bool{}
	for _, lang := range Languages {
		s := &Server{cfg: Config{Room: "R", Language: lang}}
		v := s.view(appliance.Status{State: appliance.InCall, E2EE: &on, SafetyCode: "0123 4567"}, nil)
		if !strings.Contains(v.E2EE, "0123 4567") || v.E2EE == "0123 4567" {
			t.Errorf("%s: e2ee line %q", lang, v.E2EE)
		}
		if seen[v.E2EE] {
			t.Errorf("%s: the same words as another language: %q", lang, v.E2EE)
		}
		seen[v.E2EE] = true
		if v := s.view(appliance.Status{State: appliance.InCall, E2EE: &off}, nil); v.E2EE != "" {
			t.Errorf("%s: a hop-by-hop call says %q", lang, v.E2EE)
		}
		if v := s.view(appliance.Status{State: appliance.Idle}, nil); v.E2EE != "" {
			t.Errorf("%s: idle says %q", lang, v.E2EE)
		}
		_, tx := textsFor(lang)
		v = s.view(appliance.Status{State: appliance.Fault, LED: "fault", LastError: "join failed: join: end-to-end encryption needs connector livekit (/rtc/v1)"}, nil)
		if v.Fault == nil || v.Fault.Todo != tx.TodoE2EE || tx.TodoE2EE == "" || v.BarKind != "fault" {
			t.Errorf("%s: refused join's fault view %+v", lang, v.Fault)
		}
	}
}
