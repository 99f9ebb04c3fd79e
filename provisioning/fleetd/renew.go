package fleetd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/konsult/konsult/provisioning/enrol"
	"github.com/konsult/konsult/provisioning/fleet"
	"github.com/konsult/konsult/provisioning/manager"
)

// renewer is fleetctl renew --watch inside fleetd: a unit that puts a
// renewal CSR in its reported state gets its new certificate as a signed
// command. Each CSR is answered once, remembered in the database across
// restarts.
type renewer struct{ s *Service }

func newRenewer(s *Service) *renewer { return &renewer{s: s} }

func (r *renewer) handle(ctx context.Context, fc *manager.Client, m manager.Msg) {
	var rep fleet.ReportedDoc
	if json.Unmarshal(m.Payload, &rep) != nil || rep.Identity == nil || rep.Identity.RenewalCSR == "" {
		return
	}
	sum := sha256.Sum256([]byte(rep.Identity.RenewalCSR))
	h := hex.EncodeToString(sum[:])
	if prev, err := r.s.store.Renewal(ctx, m.Unit); err != nil || prev == h {
		return
	}
	failure := ""
	if err := r.renew(ctx, fc, m.Unit, rep.Identity.RenewalCSR); err != nil {
		failure = err.Error()
		r.s.log.Warn("fleetd: renewal refused", "unit", m.Unit, "err", err)
	} else {
		r.s.log.Info("fleetd: certificate renewed", "unit", m.Unit)
	}
	if err := r.s.store.RecordRenewal(ctx, m.Unit, h, r.s.Now(), failure); err != nil {
		r.s.log.Warn("fleetd: renewal not recorded", "unit", m.Unit, "err", err)
	}
}

func (r *renewer) renew(ctx context.Context, fc *manager.Client, id, csr string) error {
	cert, err := enrol.Renew(r.s.ca, id, csr)
	if err != nil {
		return err
	}
	now := r.s.Now()
	arg, _ := json.Marshal(string(cert))
	e, err := fleet.SignCommand(r.s.fleetKey, fleet.CommandPayload{Name: fleet.CommandCertificate, Args: map[string]json.RawMessage{"certificate": arg},
		Nonce: fleet.NewNonce(), IssuedAt: now, ExpiresAt: now.Add(time.Hour), Target: fleet.Target{Device: id}})
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return fc.Publish(pctx, r.s.topics.DeviceCmd(id), false, e.Marshal())
}
