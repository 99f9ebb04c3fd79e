package agent

import (
	"errors"
	"fmt"

	"github.com/konsult/konsult/appliance/config"
	"github.com/konsult/konsult/provisioning/fleet"
)

// Unit is the running unit the agent hands configs to (appliance/unit's
// Unit). The agent checks each effective fleet config with Config, decides
// when it runs (after a call unless urgent) and how the unit reaches the
// fleet under it, and then hands the checked config to Apply.
type Unit interface {
	// Config is the config the unit would run with effective (the fleet's
	// merged TOML; empty for none) over its local config, validated. Its
	// error may quote values; the agent cuts them out before reporting.
	Config(effective []byte) (*config.Config, error)
	// Apply makes the unit run on a config from Config. An error rolls the
	// config back.
	Apply(*config.Config) error
}

// withUnit routes Validate, Apply and ConnectionFor through the Unit.
func (o *Options) withUnit() {
	u, base, demo := o.Unit, o.Connection, o.DemoBroker
	enrolled := o.Identity != nil
	o.Validate = func(eff []byte) error {
		if enrolled {
			if err := refuseEnrolledTLS(eff); err != nil {
				return err
			}
		}
		_, err := u.Config(eff)
		return err
	}
	o.ConnectionFor = func(eff []byte) (Connection, error) {
		c, err := u.Config(eff)
		if err != nil {
			return Connection{}, err
		}
		return connectionUnder(base, c.Fleet, demo, enrolled)
	}
	o.Apply = func(eff []byte) error {
		c, err := u.Config(eff)
		if err != nil {
			return err
		}
		return u.Apply(c)
	}
}

// refuseEnrolledTLS refuses a fleet config that names certificate files
// for an enrolled unit. Such a unit always speaks with the key,
// certificate and CA enrolment installed (connectionUnder ignores these
// keys), so taking the config would report "applied" for keys that do
// nothing.
func refuseEnrolledTLS(eff []byte) error {
	tree, err := fleet.ParseTOML(eff)
	if err != nil {
		return nil // the schema check that follows names it
	}
	f, _ := tree["fleet"].(map[string]any)
	for _, k := range []string{"ca_file", "cert_file", "key_file"} {
		if _, ok := f[k]; ok {
			return fmt.Errorf("fleet.%s: an enrolled unit uses the CA and certificate its enrolment installed: remove it from the fleet config", k)
		}
	}
	return nil
}

// connectionUnder is how the unit reaches its fleet under a config's
// [fleet]: the broker and certificates may come from a fleet config, the
// identity (base's device id, groups and queue) never does. An enrolled
// unit always speaks as itself: its own key and the certificate and CA
// enrolment installed, which base carries.
func connectionUnder(base Connection, f config.Fleet, demo string, enrolled bool) (Connection, error) {
	c := base
	c.Link.Broker = f.Broker
	if c.Link.Broker == "" {
		if demo == "" {
			return Connection{}, errors.New("fleet.broker is empty: a fleet config cannot switch the fleet off")
		}
		c.Link.Broker = demo
	}
	if !enrolled {
		c.Link.CAFile, c.Link.CertFile, c.Link.KeyFile = f.CAFile, f.CertFile, f.KeyFile
	}
	c.ConfirmTimeout = f.ConfirmTimeout.Duration
	return c, nil
}
