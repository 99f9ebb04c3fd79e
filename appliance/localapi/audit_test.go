package localapi

import (
	"context"
	"net/http"
	"strings"
	"testing"
)

// auditUnit is a fakeUnit that keeps an audit log.
type auditUnit struct{ fakeUnit }

const auditMarker = `{"chain":"c0ffee","seq":1,"kind":"call_joined","fields":{"meeting":"` + statusMarker + `"}}`

func (*auditUnit) AuditLog() (AuditLog, error) {
	return AuditLog{File: "/var/lib/konsult/fleet/audit/audit.jsonl", Lines: []string{auditMarker}}, nil
}

// The audit log names every call the unit made: a page in the unit's
// browser (or any local user, over loopback TCP) must not read it; roomctl
// reads it on the socket, line for line as on disk.
func TestAuditLogOnlyOnTheSocket(t *testing.T) {
	log, _ := newLogRecorder()
	unix, base := startAPI(t, &auditUnit{}, log)
	code, body := send(t, testHTTP, base, req{method: http.MethodGet, path: "/v1/audit"})
	if code != http.StatusForbidden || strings.Contains(body, statusMarker) {
		t.Fatalf("HTTP GET /v1/audit: %d %s, want 403 and nothing of the log", code, body)
	}
	if _, err := Dial(base).AuditLog(context.Background()); err == nil || !strings.Contains(err.Error(), "unix socket") {
		t.Fatalf("roomctl --http audit: %v, want the unix-socket refusal", err)
	}
	l, err := unix.AuditLog(context.Background())
	if err != nil || len(l.Lines) != 1 || l.Lines[0] != auditMarker {
		t.Fatalf("on the socket: %+v, %v; want the log's line as it stands", l, err)
	}
	// A unit without a log says so.
	plain, _ := startAPI(t, &fakeUnit{}, log)
	if _, err := plain.AuditLog(context.Background()); err == nil || !strings.Contains(err.Error(), "no audit log") {
		t.Fatalf("a unit without a log: %v", err)
	}
}
