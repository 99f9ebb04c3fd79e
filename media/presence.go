package media

// Presence is one change in who else is in the meeting, as a connector
// reports it to the appliance. Participant is a pseudonym, valid for one
// call only (a keyed hash of the server's identity with a per-call salt):
// never a person's name or identity string (invariant 7).
type Presence struct {
	Participant string
	Joined      bool // false: left
	Others      int  // far-end participants in the meeting after this change
}
