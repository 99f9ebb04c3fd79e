package localapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/konsult/konsult/appliance"
)

// Client talks to roomd's local API over its unix socket or loopback HTTP.
type Client struct {
	hc    *http.Client
	base  string
	where string
}

// Dial returns a client for a unix socket path, or an http://127.0.0.1:port URL.
func Dial(target string) *Client {
	if strings.HasPrefix(target, "http://") {
		return &Client{hc: &http.Client{}, base: strings.TrimSuffix(target, "/"), where: target}
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		// In the guessable fallback folder, whoever made it first could
		// be listening in roomd's place.
		if dir := filepath.Dir(target); dir == fallbackSocketDir() {
			if err := privateDir(dir, false); err != nil {
				return nil, err
			}
		}
		var d net.Dialer
		return d.DialContext(ctx, "unix", target)
	}}
	return &Client{hc: &http.Client{Transport: tr}, base: "http://roomd", where: target}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.explain(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		if e.Error == "" {
			e.Error = resp.Status
		}
		return errors.New(e.Error)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (c *Client) explain(err error) error {
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("roomd is not running at %s (start it with `roomd --sim`, or point --socket at the right place): %w", c.where, err)
	}
	if errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("no permission for %s: run as the unit's user (the socket is mode 0600): %w", c.where, err)
	}
	return fmt.Errorf("talk to roomd at %s: %w", c.where, err)
}

// Status decodes /v1/status into out.
func (c *Client) Status(ctx context.Context, out any) error {
	return c.do(ctx, http.MethodGet, "/v1/status", nil, out)
}

// Action asks for an action.
func (c *Client) Action(ctx context.Context, a string) error {
	return c.do(ctx, http.MethodPost, "/v1/action", map[string]string{"action": a}, nil)
}

// Press presses a simulated button for holdMS milliseconds.
func (c *Client) Press(ctx context.Context, button string, holdMS int) error {
	return c.do(ctx, http.MethodPost, "/v1/press", map[string]any{"button": button, "hold_ms": holdMS}, nil)
}

// Fault switches a simulated fault on or off.
func (c *Client) Fault(ctx context.Context, fault string, on bool) error {
	return c.do(ctx, http.MethodPost, "/v1/fault", map[string]any{"fault": fault, "on": on}, nil)
}

// Enrol gives the unit a claim code.
func (c *Client) Enrol(ctx context.Context, code string) error {
	return c.do(ctx, "POST", "/v1/enrol", map[string]string{"code": code}, nil)
}

// FactoryReset wipes the unit (the API refuses without confirm).
func (c *Client) FactoryReset(ctx context.Context, confirm bool) error {
	return c.do(ctx, "POST", "/v1/factory-reset", map[string]bool{"confirm": confirm}, nil)
}

// Doctor runs the wiring checks.
func (c *Client) Doctor(ctx context.Context) ([]Check, error) {
	var out []Check
	err := c.do(ctx, http.MethodGet, "/v1/doctor", nil, &out)
	return out, err
}

// Events streams events to fn until ctx ends, the stream ends, or fn returns false.
func (c *Client) Events(ctx context.Context, fn func(appliance.Event) bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/events", nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.explain(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev appliance.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("bad event from roomd: %w", err)
		}
		if !fn(ev) {
			return nil
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return sc.Err()
}

// PrivacyReport fetches the unit's privacy report (JSON, appliance/report's
// Report) into out.
func (c *Client) PrivacyReport(ctx context.Context, out any) error {
	return c.do(ctx, http.MethodGet, "/v1/privacy-report", nil, out)
}

// AuditLog fetches the unit's audit log as it stands (socket only).
func (c *Client) AuditLog(ctx context.Context) (AuditLog, error) {
	var l AuditLog
	err := c.do(ctx, http.MethodGet, "/v1/audit", nil, &l)
	return l, err
}
