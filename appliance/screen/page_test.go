package screen_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/appliance/screen"
	"github.com/konsult/konsult/internal/screentest"
	"github.com/konsult/konsult/media/display"
	"github.com/konsult/konsult/media/gate"
)

// fakeMedia lists far-end slots without any video (layout checks).
type fakeMedia struct{ far []display.SlotState }

func (m fakeMedia) State() display.State {
	return display.State{InCall: true, CameraOut: true, Far: m.far, Self: display.SlotState{Slot: display.SelfSlot}}
}
func (m fakeMedia) Changed() <-chan struct{} { return make(chan struct{}) }
func (m fakeMedia) Connect(context.Context, string) (display.Answer, error) {
	return display.Answer{}, errors.New("no video in this test")
}

type pageText struct {
	Lang, Class, Notice, Room, Press, Health, Bar string
	FaultTitle, Reasons, Todo                     string
	Overflow                                      []string
}

// pageTextJS reads what the page shows, and which parts do not fit the
// viewport (cut off, or outside it).
const pageTextJS = `(() => { if (!document.documentElement || !document.getElementById('notice')) return {Overflow: []};
  const t = (id) => document.getElementById(id).textContent;
  const over = [];
  for (const el of document.querySelectorAll('#bar, #notice, #idle > *, #fault > *, .tile:not([hidden]), #self')) {
    const r = el.getBoundingClientRect(); if (r.width === 0 && r.height === 0) continue;
    if (r.left < -1 || r.top < -1 || r.right > innerWidth + 1 || r.bottom > innerHeight + 1 || el.scrollWidth > el.clientWidth + 1) over.push(el.id || el.className);
  }
  return {Lang: document.documentElement.lang, Class: document.body.className, Notice: t('notice'), Room: t('room'), Press: t('press'),
    Health: t('health'), Bar: t('bar-text'), FaultTitle: t('fault-title'), Reasons: t('fault-reasons'), Todo: t('todo'), Overflow: over}; })()`

// The notice for the people in the room is there in each of the four
// languages; the fault screen names the reason and what to do; idle, fault
// and a call fit 1920x1080, 1280x720 and 800x480.
func TestScreenPageTextsAndSizes(t *testing.T) {
	idle := newFakeUnit(appliance.Status{State: appliance.Idle, Shutter: "closed"}, nil)
	sc := screentest.Start(t, "about:blank", 1280, 720)
	// A word of each notice that only its language has.
	words := map[string][]string{
		"nl": {"niets opgenomen", "LIVE", "camera en de microfoon"},
		"es": {"No se graba nada", "LIVE", "la cámara y el micrófono"},
		"nb": {"Ingenting tas opp", "LIVE", "Kameraet og mikrofonen"},
		"en": {"Nothing is recorded", "LIVE", "camera and microphone"},
	}
	for _, lang := range screen.Languages {
		url := startServer(t, screen.Config{Room: "Room 3", Language: lang, Unit: idle})
		sc.Navigate(url)
		p := screentest.WaitUntil(t, sc, lang+" idle screen", 10*time.Second, pageTextJS, func(p pageText) bool { return p.Lang == lang && p.Notice != "" })
		for _, w := range words[lang] {
			if !strings.Contains(strings.ToLower(p.Notice), strings.ToLower(w)) {
				t.Errorf("%s notice %q lacks %q", lang, p.Notice, w)
			}
		}
		if p.Room != "Room 3" || !strings.Contains(p.Press, "JOIN") || p.Class != "state-idle" {
			t.Errorf("%s idle screen %+v", lang, p)
		}
		t.Logf("%s: %s | %s | %s", lang, p.Press, p.Health, p.Notice)
		screentest.SaveShot(t, sc, "idle-"+lang+".png")
	}

	// Unknown language: the default.
	url := startServer(t, screen.Config{Room: "Room 3", Language: "fr", Unit: idle})
	sc.Navigate(url)
	screentest.WaitUntil(t, sc, "default language", 10*time.Second, pageTextJS, func(p pageText) bool { return p.Lang == screen.DefaultLanguage })

	reason := "shutter did not close: no end-stop signal within 3s"
	fault := newFakeUnit(appliance.Status{State: appliance.Fault, Shutter: "unconfirmed", Faults: []string{reason}}, nil)
	for _, lang := range []string{"en", "nl"} {
		url := startServer(t, screen.Config{Room: "Room 3", Language: lang, Unit: fault})
		sc.Navigate(url)
		p := screentest.WaitUntil(t, sc, lang+" fault screen", 10*time.Second, pageTextJS, func(p pageText) bool { return p.Class == "state-fault" })
		want := map[string]string{"en": "shutter", "nl": "cameraklep"}[lang]
		if !strings.Contains(p.Reasons, reason) || !strings.Contains(p.Todo, want) || p.FaultTitle == "" {
			t.Errorf("%s fault screen does not name the reason and what to do: %+v", lang, p)
		}
		t.Logf("%s fault: %s: %s — %s", lang, p.FaultTitle, p.Reasons, p.Todo)
	}

	g := gate.New()
	g.Set(gate.State{Video: true, Audio: true})
	began := time.Now().Add(-75 * time.Second)
	call := newFakeUnit(appliance.Status{State: appliance.InCall, Since: began, Shutter: "open"}, g)
	media := fakeMedia{far: []display.SlotState{{Slot: 0, Participant: "p-1", Speaking: true}, {Slot: 1, Participant: "p-2"}, {Slot: 2, Participant: "p-3"}}}
	callURL := startServer(t, screen.Config{Room: "Room 3", Unit: call, Media: media})
	faultURL := startServer(t, screen.Config{Room: "Room 3", Unit: fault})
	idleURL := startServer(t, screen.Config{Room: "Room 3", Unit: idle})
	var overlapURLs []string
	for n := 1; n <= 3; n++ {
		overlapURLs = append(overlapURLs, startServer(t, screen.Config{Room: "Room 3", Unit: call, Media: fakeMedia{far: media.far[:n]}}))
	}
	for _, size := range [][2]int{{1920, 1080}, {1280, 720}, {800, 480}} {
		sc.Call("Emulation.setDeviceMetricsOverride", map[string]any{"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": false})
		for _, s := range []struct{ name, url, class string }{{"idle", idleURL, "state-idle"}, {"fault", faultURL, "state-fault"}, {"call", callURL, "state-in_call"}} {
			sc.Navigate(s.url)
			p := screentest.WaitUntil(t, sc, s.name, 10*time.Second, pageTextJS, func(p pageText) bool { return p.Class == s.class })
			time.Sleep(100 * time.Millisecond) // layout after the first state
			sc.Eval(pageTextJS, &p)
			if len(p.Overflow) > 0 {
				t.Errorf("%dx%d %s: %v do not fit the screen", size[0], size[1], s.name, p.Overflow)
			}
			if s.name == "call" {
				var tiles []screentest.Tile
				sc.Eval(screentest.TilesJS, &tiles)
				if len(tiles) != 3 || !tiles[0].Speaking || tiles[1].Speaking {
					t.Errorf("%dx%d call: tiles %+v, want 3 with the first speaking", size[0], size[1], tiles)
				}
				if p.Bar != "LIVE: camera and microphone on" {
					t.Errorf("call status bar %q", p.Bar)
				}
			}
			screentest.SaveShot(t, sc, fmt.Sprintf("%s-%dx%d.png", s.name, size[0], size[1]))
		}
		// Every far-end participant is wholly visible: no tile lies under
		// the self-view, with one, two or three far ends.
		for _, url := range overlapURLs {
			sc.Navigate(url)
			screentest.WaitUntil(t, sc, "call", 10*time.Second, pageTextJS, func(p pageText) bool { return p.Class == "state-in_call" })
			time.Sleep(100 * time.Millisecond)
			var hit []string
			sc.Eval(tilesUnderSelfJS, &hit)
			if len(hit) > 0 {
				t.Errorf("%dx%d: the self-view covers part of %v", size[0], size[1], hit)
			}
		}
	}
	// The call timer runs from the call's start.
	var timer string
	sc.Eval(`document.getElementById('timer').textContent`, &timer)
	var m, sec int
	if _, err := fmt.Sscanf(timer, "%d:%d", &m, &sec); err != nil || math.Abs(float64(m*60+sec)-time.Since(began).Seconds()) > 2 {
		t.Errorf("call timer %q, want the %.0f s since the call began", timer, time.Since(began).Seconds())
	}
}

// tilesUnderSelfJS names the shown tiles whose box meets the self-view's.
const tilesUnderSelfJS = `(() => { const s = document.getElementById('self').getBoundingClientRect(); const out = [];
  for (const t of document.querySelectorAll('.tile')) { if (t.hidden) continue; const r = t.getBoundingClientRect();
    if (r.right > s.left && r.left < s.right && r.bottom > s.top && r.top < s.bottom) out.push(t.dataset.participant || t.dataset.slot); }
  return out; })()`
