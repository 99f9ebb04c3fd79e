// Package encoder chooses the unit's video and audio encoders.
//
// Each backend says whether it can run on this machine and how good it is;
// Choose picks the best one that can run and explains the choice, which
// `roomctl doctor` shows. The software backends (openh264 H.264, libvpx VP8,
// opus) register themselves when roomd is built with cgo. Hardware
// backends (V4L2 memory-to-memory, VAAPI) slot in with a higher Quality and
// are preferred when their device is present.
package encoder

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/pion/mediadevices/pkg/codec"
)

// Kind is video or audio.
type Kind string

const (
	Video Kind = "video"
	Audio Kind = "audio"
)

// Settings are what the config asks of an encoder.
type Settings struct {
	BitRate          int // bits per second
	KeyFrameInterval int // frames
	// PassThrough is for the camera pass-through backend: whether it is
	// wanted, and which camera at what size. Other backends ignore it.
	PassThrough PassThroughConfig
}

// Backend is one encoder implementation.
type Backend struct {
	Name    string // e.g. "openh264"
	Codec   string // "H264", "VP8", "opus"
	Kind    Kind
	Quality int    // higher wins: hardware 100+, software 10–60
	License string // shipped firmware must mind this
	// Probe reports why the backend cannot run here with these settings,
	// or nil.
	Probe func(Settings) error
	// Video or Audio builds the mediadevices encoder builder.
	Video func(Settings) (codec.VideoEncoderBuilder, error)
	Audio func(Settings) (codec.AudioEncoderBuilder, error)
	// Detail, if set, says more once the backend is chosen (for camera
	// pass-through: which camera, and what the unit can steer on it).
	Detail func(Settings) string
}

var (
	mu       sync.Mutex
	backends []Backend
)

// Register adds a backend; called from init functions.
func Register(b Backend) {
	mu.Lock()
	defer mu.Unlock()
	backends = append(backends, b)
}

// Candidate is one backend as seen by Choose.
type Candidate struct {
	Name, Codec, License string
	Quality              int
	Usable               bool
	Why                  string // why not usable, or why chosen
}

// Choice is the outcome for one kind.
type Choice struct {
	Kind       Kind
	Chosen     *Backend
	Candidates []Candidate
	settings   Settings // what Choose probed with, for Detail
}

// Explain is one line for doctor and the log.
func (c Choice) Explain() string {
	if c.Chosen == nil {
		var why []string
		for _, cd := range c.Candidates {
			why = append(why, cd.Name+": "+cd.Why)
		}
		if len(why) == 0 {
			return fmt.Sprintf("no %s encoder is built into this roomd (built without cgo?)", c.Kind)
		}
		return fmt.Sprintf("no usable %s encoder (%s)", c.Kind, strings.Join(why, "; "))
	}
	var others []string
	for _, cd := range c.Candidates {
		if cd.Name == c.Chosen.Name {
			continue
		}
		state := "quality " + fmt.Sprint(cd.Quality)
		if !cd.Usable {
			state = "unusable: " + cd.Why
		}
		others = append(others, cd.Name+" ("+state+")")
	}
	s := fmt.Sprintf("%s: %s %s (quality %d, %s licence)", c.Kind, c.Chosen.Name, c.Chosen.Codec, c.Chosen.Quality, c.Chosen.License)
	if c.Chosen.Detail != nil {
		s += ": " + c.Chosen.Detail(c.settings)
	}
	if len(others) > 0 {
		s += "; also found " + strings.Join(others, ", ")
	}
	return s
}

// ErrNone means no backend of the wanted kind and codec can run.
var ErrNone = errors.New("no usable encoder")

// Choose picks the best usable backend of kind k for settings s.
// codecName "" or "auto" takes any codec; otherwise only that codec
// ("H264", "VP8", "opus").
func Choose(k Kind, codecName string, s Settings) (Choice, error) {
	mu.Lock()
	list := append([]Backend(nil), backends...)
	mu.Unlock()
	sort.SliceStable(list, func(i, j int) bool { return list[i].Quality > list[j].Quality })
	ch := Choice{Kind: k, settings: s}
	for i := range list {
		b := list[i]
		if b.Kind != k {
			continue
		}
		cd := Candidate{Name: b.Name, Codec: b.Codec, License: b.License, Quality: b.Quality}
		switch {
		case codecName != "" && codecName != "auto" && !strings.EqualFold(codecName, b.Codec):
			cd.Why = "codec " + b.Codec + " not the configured " + codecName
		default:
			if err := probe(b, s); err != nil {
				cd.Why = err.Error()
			} else {
				cd.Usable = true
				if ch.Chosen == nil {
					ch.Chosen = &list[i]
					cd.Why = "chosen: best usable"
				}
			}
		}
		ch.Candidates = append(ch.Candidates, cd)
	}
	if ch.Chosen == nil {
		return ch, fmt.Errorf("%w: %s", ErrNone, ch.Explain())
	}
	return ch, nil
}

func probe(b Backend, s Settings) error {
	if b.Probe == nil {
		return nil
	}
	return b.Probe(s)
}
