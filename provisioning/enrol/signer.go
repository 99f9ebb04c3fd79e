package enrol

import "crypto"

// Signer is the unit's identity key: its certificate's, which signs its
// conference token requests to fleetd and opens fleetd's sealed answers.
func (u *Unit) Signer() crypto.Signer { return u.key.Signer() }
