package enrol

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/konsult/konsult/provisioning/identity"
	"github.com/konsult/konsult/provisioning/link"
)

// Phases of a unit's enrolment (Status.Phase), shown by roomctl status.
const (
	PhaseNeedCode   = "waiting_for_claim_code"
	PhaseConnecting = "connecting"
	PhaseWaiting    = "waiting_for_approval"
	PhaseRejected   = "rejected" // the fleet said no; a new claim code starts again
	PhaseRefused    = "refused"  // the unit said no to what the fleet sent
	PhaseEnrolled   = "enrolled"
)

// Status is where a unit's enrolment stands. Messages never carry a
// secret: not the claim code, not a key.
type Status struct {
	Phase   string    `json:"phase"`
	Reason  string    `json:"reason,omitempty"`
	Message string    `json:"message,omitempty"`
	At      time.Time `json:"at"`
}

// EnrolPort is the shipped broker's listener for enrolling units and the
// fleet manager (deploy/mosquitto); 8883 is the enrolled units'.
const EnrolPort = "8884"

// EnrolBroker derives the enrolment broker from the fleet broker URL: the
// same host on EnrolPort. "" stays "".
func EnrolBroker(fleetBroker string) string {
	if fleetBroker == "" {
		return ""
	}
	u, err := url.Parse(fleetBroker)
	if err != nil || u.Hostname() == "" {
		return fleetBroker // NewClient's connect names what is wrong with it
	}
	u.Host = net.JoinHostPort(u.Hostname(), EnrolPort)
	return u.String()
}

// ClientOptions configures a unit's enrolment.
type ClientOptions struct {
	// Broker is the enrolment listener, mqtts://host[:port] (port
	// default EnrolPort): not the enrolled units' one, where the shared
	// credential's client id would be its CN, the same for every
	// enrolling unit. CAFile the fleet CA, which the unit trusts for the
	// broker and for the decision; CertFile and KeyFile the fleet's shared
	// enrolment credential.
	Broker                    string
	CAFile, CertFile, KeyFile string
	Prefix                    string
	Key                       identity.KeySource
	DeviceID                  string
	Model, Version            string
	// FirstRequested is kept across restarts by the caller (zero: now).
	FirstRequested time.Time
	Logger         *slog.Logger
	// OnStatus is called on every change (from the client's goroutines).
	OnStatus func(Status)
	// Retry is the wait between connection attempts (default 5 s).
	Retry time.Duration
}

// Client enrols one unit.
type Client struct {
	o      ClientOptions
	ca     *x509.Certificate
	topics link.Topics
	codes  chan string
	msgs   chan []byte
	csr    string
	// reconn is signalled on every connect: the request is sent again (the
	// session is clean, so the broker kept only retained messages).
	reconn chan struct{}
}

// NewClient checks the options and makes the unit's certificate request.
func NewClient(o ClientOptions) (*Client, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Retry <= 0 {
		o.Retry = 5 * time.Second
	}
	if o.FirstRequested.IsZero() {
		o.FirstRequested = time.Now()
	}
	if o.OnStatus == nil {
		o.OnStatus = func(Status) {}
	}
	for name, v := range map[string]string{"enrol_broker": o.Broker, "ca_file": o.CAFile, "enrol_cert": o.CertFile, "enrol_key": o.KeyFile} {
		if v == "" {
			return nil, fmt.Errorf("enrol: fleet.%s is empty: the unit needs the fleet's broker, CA and enrolment credential to enrol", name)
		}
	}
	b, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("enrol: fleet CA: %w", err)
	}
	ca, err := identity.ParseCert(b)
	if err != nil {
		return nil, fmt.Errorf("enrol: fleet CA %s: %w", o.CAFile, err)
	}
	csr, err := identity.NewCSR(o.Key, o.DeviceID)
	if err != nil {
		return nil, fmt.Errorf("enrol: %w", err)
	}
	return &Client{o: o, ca: ca, topics: link.Topics{Prefix: o.Prefix}, codes: make(chan string, 1), msgs: make(chan []byte, 8), csr: string(csr), reconn: make(chan struct{}, 1)}, nil
}

// SetClaimCode gives the client a (new) claim code; it (re)sends the
// request at once.
func (c *Client) SetClaimCode(code string) error {
	n, err := NormalizeClaimCode(code)
	if err != nil {
		return err
	}
	select {
	case <-c.codes:
	default:
	}
	c.codes <- n
	return nil
}

// Run enrols the unit: it waits for a claim code, sends the request, and
// returns the identity to install once the fleet approves and the
// certificate checks out. It returns early only when ctx ends.
func (c *Client) Run(ctx context.Context) (identity.State, error) {
	var code string
	var refusal *Refusal
	var proof string
	status := func(phase, reason, msg string) {
		c.o.OnStatus(Status{Phase: phase, Reason: reason, Message: msg, At: time.Now()})
	}
	status(PhaseNeedCode, "", "give the unit its claim code: the file on the boot partition, fleet.claim_code, or roomctl enrol CODE")
	select {
	case code = <-c.codes:
	case <-ctx.Done():
		return identity.State{}, ctx.Err()
	}
	cl, err := c.connect(ctx, status)
	if err != nil {
		return identity.State{}, err
	}
	defer cl.Disconnect(250)
	send := func() {
		proof = ClaimProof(code, c.o.DeviceID, c.csr)
		req := Request{DeviceID: c.o.DeviceID, CSR: c.csr, Model: c.o.Model, Version: c.o.Version, ClaimProof: proof,
			FirstRequested: c.o.FirstRequested, SentAt: time.Now(), Refusal: refusal}
		b, _ := json.Marshal(req)
		t := cl.Publish(c.topics.EnrolRequest(c.o.DeviceID), 1, true, b)
		// The request is retained: if this publish is lost with the
		// connection, the next connect sends it again (onConnect).
		go func() {
			if t.WaitTimeout(10*time.Second) && t.Error() != nil {
				c.o.Logger.Warn("enrolment request not sent", "err", t.Error())
			}
		}()
		if refusal == nil {
			status(PhaseWaiting, "", "the request is with the fleet: ask the fleet manager to approve "+c.o.DeviceID)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return identity.State{}, ctx.Err()
		case <-c.reconn:
			if code != "" {
				send()
			}
		case code = <-c.codes:
			refusal = nil
			send()
		case b := <-c.msgs:
			if len(b) == 0 {
				continue // a cleared response
			}
			d, err := VerifyDecision(b, c.ca)
			if err != nil {
				reason := "malformed"
				if errors.Is(err, ErrNotFromFleetCA) {
					reason = "ca_changed"
				}
				c.o.Logger.Warn("enrolment: decision refused", "reason", reason, "err", err)
				refusal = &Refusal{Reason: reason, Message: err.Error()}
				status(PhaseRefused, reason, err.Error())
				send()
				continue
			}
			if d.Answers != proof {
				continue // a decision on an earlier request
			}
			if d.Status == Rejected {
				status(PhaseRejected, d.Reason, d.Message+": give the unit a new claim code (roomctl enrol CODE) once the fleet manager agrees")
				code = ""
				select {
				case code = <-c.codes:
					refusal = nil
					send()
				case <-ctx.Done():
					return identity.State{}, ctx.Err()
				}
				continue
			}
			st, reason, err := c.check(d)
			if err != nil {
				c.o.Logger.Warn("enrolment: approval refused", "reason", reason, "err", err)
				refusal = &Refusal{Reason: reason, Message: err.Error()}
				status(PhaseRefused, reason, err.Error())
				send()
				continue
			}
			// Done with the shared credential: clear the request so the
			// fleet's pending list shows only units still waiting.
			cl.Publish(c.topics.EnrolRequest(c.o.DeviceID), 1, true, []byte{}).WaitTimeout(5 * time.Second)
			status(PhaseEnrolled, "", "enrolled as "+c.o.DeviceID)
			return st, nil
		}
	}
}

// check verifies an approval: for this unit, a certificate from the CA the
// unit trusts for the unit's own key, valid now.
func (c *Client) check(d Decision) (identity.State, string, error) {
	if d.DeviceID != c.o.DeviceID {
		return identity.State{}, "other_unit", fmt.Errorf("%w (it names %s, this unit is %s)", identity.ErrOtherUnit, d.DeviceID, c.o.DeviceID)
	}
	ca, err := identity.ParseCert([]byte(d.CA))
	if err != nil || !ca.Equal(c.ca) {
		return identity.State{}, "ca_changed", identity.ErrCAChanged
	}
	if _, err := identity.Check([]byte(d.Certificate), c.ca, c.o.DeviceID, c.o.Key.Signer().Public(), time.Now()); err != nil {
		return identity.State{}, ReasonFor(err), err
	}
	if d.Broker == "" || d.FleetKey == "" {
		return identity.State{}, "incomplete", errors.New("the approval has no broker or fleet key: approve again with fleetctl enrol approve")
	}
	return identity.State{DeviceID: c.o.DeviceID, Certificate: d.Certificate, CA: d.CA, FleetKey: d.FleetKey,
		Broker: d.Broker, Groups: d.Groups, InstalledAt: time.Now()}, "", nil
}

// ReasonFor maps identity.Check's errors to stable reason strings.
func ReasonFor(err error) string {
	switch {
	case errors.Is(err, identity.ErrOtherUnit):
		return "other_unit"
	case errors.Is(err, identity.ErrKeyMismatch):
		return "key_mismatch"
	case errors.Is(err, identity.ErrExpired):
		return "expired"
	case errors.Is(err, identity.ErrCAChanged):
		return "ca_changed"
	}
	return "malformed"
}

func (c *Client) connect(ctx context.Context, status func(phase, reason, msg string)) (mqtt.Client, error) {
	u, err := url.Parse(c.o.Broker)
	if err != nil || (u.Scheme != "mqtts" && u.Scheme != "ssl") || u.Hostname() == "" {
		return nil, fmt.Errorf("enrol: broker %q: write it as mqtts://host[:%s]", c.o.Broker, EnrolPort)
	}
	port := u.Port()
	if port == "" {
		port = EnrolPort
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.ca)
	opts := mqtt.NewClientOptions().
		AddBroker("ssl://" + net.JoinHostPort(u.Hostname(), port)).
		// Its own id, under the prefix the broker requires of chosen ids:
		// enrolling units never share one, so they never close each
		// other's connections, and none can be an enrolled unit's.
		SetClientID(c.topics.EnrolClientID(c.o.DeviceID)).
		SetCleanSession(true).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(c.o.Retry * 4).
		SetConnectTimeout(10 * time.Second).
		SetKeepAlive(30 * time.Second).
		SetTLSConfig(&tls.Config{
			RootCAs:    pool,
			MinVersion: tls.VersionTLS12,
			// Read per connect, like the link, so a re-shipped
			// credential is picked up.
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				cert, err := tls.LoadX509KeyPair(c.o.CertFile, c.o.KeyFile)
				if err != nil {
					return nil, fmt.Errorf("enrolment credential: %w", err)
				}
				return &cert, nil
			},
		}).
		SetOnConnectHandler(func(cl mqtt.Client) {
			cl.Subscribe(c.topics.EnrolResponse(c.o.DeviceID), 1, func(_ mqtt.Client, m mqtt.Message) {
				select {
				case c.msgs <- m.Payload():
				default:
				}
			})
			select {
			case c.reconn <- struct{}{}:
			default:
			}
		})
	cl := mqtt.NewClient(opts)
	status(PhaseConnecting, "", "connecting to "+u.Host+" with the fleet's enrolment credential")
	for {
		t := cl.Connect()
		t.Wait()
		if t.Error() == nil {
			return cl, nil
		}
		msg := fmt.Sprintf("cannot reach the fleet broker %s: %v (check the network and fleet.broker)", u.Host, t.Error())
		c.o.Logger.Warn("enrolment: connect", "broker", u.Host, "err", t.Error())
		status(PhaseConnecting, "broker_unreachable", msg)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(c.o.Retry):
		}
	}
}
