package screen

import (
	"fmt"
	"strings"
	"time"

	"github.com/konsult/konsult/appliance"
	"github.com/konsult/konsult/media/display"
)

// View is everything the page shows, in words already in the configured
// language: the page only lays it out.
type View struct {
	Room  string `json:"room"`
	Lang  string `json:"lang"`
	State string `json:"state"` // idle, joining, in_call, leaving, fault
	// Bar mirrors the LED's meaning in words; BarKind is its colour class
	// (live, private, busy, fault, off).
	Bar       string `json:"bar"`
	BarKind   string `json:"bar_kind"`
	PressJoin string `json:"press_join,omitempty"`
	// Next is the next consultation's time (only a time, never a name),
	// or that a JOIN found none due.
	Next   string `json:"next,omitempty"`
	Health string `json:"health"`
	Notice string `json:"notice"`
	// CallSince is when the call began (unix ms), for the call timer.
	CallSince int64  `json:"call_since,omitempty"`
	Now       int64  `json:"now"`
	Others    int    `json:"others"`
	OthersTxt string `json:"others_text,omitempty"`
	// E2EE is, during an end-to-end encrypted call, that it is and the
	// safety code to compare with the patient's page ("" otherwise).
	E2EE string `json:"e2ee,omitempty"`
	// CameraOut is the gate's video state: the self-view shows the room
	// only while it is true.
	CameraOut  bool           `json:"camera_out"`
	CameraShut string         `json:"camera_shut"`
	Fault      *FaultView     `json:"fault,omitempty"`
	Media      *display.State `json:"media,omitempty"`
}

// FaultView is the fault screen: the reason, and what to do about it.
type FaultView struct {
	Title    string   `json:"title"`
	Reasons  []string `json:"reasons"`
	WhatToDo string   `json:"what_to_do_title"`
	Todo     string   `json:"todo"`
}

// view builds the page's view from the unit's status and the display's
// media state (nil without video).
func (s *Server) view(st appliance.Status, m *display.State) View {
	lang, t := textsFor(s.cfg.Language)
	v := View{Room: s.cfg.Room, Lang: lang, State: string(st.State), Notice: t.Notice, Now: time.Now().UnixMilli(),
		CameraOut: st.Gate.Video, CameraShut: t.CameraShut, Media: m}
	if m != nil {
		v.CameraOut = v.CameraOut && m.CameraOut // both are the same gate; either closed is closed
	}
	switch {
	case st.State == appliance.Fault || len(st.Faults) > 0:
		v.Bar, v.BarKind = t.Fault, "fault"
	case st.Gate.Video && st.Gate.Audio:
		v.Bar, v.BarKind = t.Live, "live"
	case st.Gate.Video:
		v.Bar, v.BarKind = t.LiveMicOff, "live"
	case st.Gate.Audio:
		v.Bar, v.BarKind = t.LiveCamOff, "live"
	case st.State == appliance.InCall:
		v.Bar, v.BarKind = t.Private, "private"
	case st.State == appliance.Joining:
		v.Bar, v.BarKind = t.Joining, "busy"
	case st.State == appliance.Leaving:
		v.Bar, v.BarKind = t.Leaving, "busy"
	default:
		v.Bar, v.BarKind = t.Private, "off"
	}
	if st.State == appliance.Idle {
		v.PressJoin = t.PressJoin
		v.Next = s.next(st, t)
	}
	health := t.Ready
	if len(st.Faults) > 0 || st.State == appliance.Fault {
		health = t.Faulty
	}
	if w, ok := t.Shutter[st.Shutter]; ok {
		health += " · " + w
	}
	v.Health = health
	if st.State == appliance.InCall {
		v.CallSince = st.Since.UnixMilli()
		if s.cfg.Others != nil {
			v.Others = s.cfg.Others()
		} else if m != nil {
			v.Others = len(m.Far)
		}
		v.OthersTxt = fmt.Sprintf(t.FarPeople, v.Others)
		if st.E2EE != nil && *st.E2EE && st.SafetyCode != "" {
			v.E2EE = fmt.Sprintf(t.E2EE, st.SafetyCode)
		}
	}
	if st.State == appliance.Fault || len(st.Faults) > 0 {
		reasons := append([]string(nil), st.Faults...)
		if st.LastError != "" {
			reasons = append(reasons, st.LastError)
		}
		if len(reasons) == 0 {
			reasons = []string{t.Fault}
		}
		v.Fault = &FaultView{Title: t.Fault, Reasons: reasons, WhatToDo: t.WhatToDo, Todo: todoFor(t, strings.Join(reasons, " "))}
	}
	return v
}

// next is the idle screen's line about the schedule: the consultation due
// (from DueLead before its start) or the next one, else "no consultation
// now" after a JOIN that found none.
func (s *Server) next(st appliance.Status, t texts) string {
	if st.Notice == appliance.ErrRestarting.Error() {
		return t.Restarting
	}
	if s.cfg.Next != nil {
		if start, ok := s.cfg.Next(); ok {
			at := start.Local().Format("15:04")
			if time.Until(start) <= DueLead {
				return fmt.Sprintf(t.DueAt, at)
			}
			return fmt.Sprintf(t.NextAt, at)
		}
	}
	if st.Notice != "" {
		return t.NothingDue
	}
	return ""
}
