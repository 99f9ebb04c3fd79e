package whip

import (
	"context"
	"fmt"
	"log/slog"
)

// redactHandler wraps the caller's slog.Handler and removes the token from
// the message and every attribute, as a second safety net behind the
// package's own care never to log it.
type redactHandler struct {
	h     slog.Handler
	token string
}

func (r *redactHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return r.h.Enabled(ctx, l)
}

func (r *redactHandler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, redact(rec.Message, r.token), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(r.attr(a))
		return true
	})
	return r.h.Handle(ctx, out)
}

func (r *redactHandler) WithAttrs(as []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(as))
	for i, a := range as {
		red[i] = r.attr(a)
	}
	return &redactHandler{h: r.h.WithAttrs(red), token: r.token}
}

func (r *redactHandler) WithGroup(name string) slog.Handler {
	return &redactHandler{h: r.h.WithGroup(name), token: r.token}
}

func (r *redactHandler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, redact(v.String(), r.token))
	case slog.KindGroup:
		g := v.Group()
		red := make([]any, len(g))
		for i, ga := range g {
			red[i] = r.attr(ga)
		}
		return slog.Group(a.Key, red...)
	case slog.KindAny:
		return slog.String(a.Key, redact(fmt.Sprint(v.Any()), r.token))
	default:
		return slog.Attr{Key: a.Key, Value: v}
	}
}

// newLogger returns the package logger: discard if l is nil, else l with
// the token redacted.
func newLogger(l *slog.Logger, token string) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	if token == "" {
		return l
	}
	return slog.New(&redactHandler{h: l.Handler(), token: token})
}
