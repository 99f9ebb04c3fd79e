package appliance

import "errors"

// ErrNothingDue is what a Conference's Join returns when the room has
// nothing to enter now: no consultation is due and there is no standing
// meeting (a fleet unit whose fleetd has nothing for it). It is not a
// fault: the unit goes back to idle, says so in Status.Notice and in a
// "call"/"nothing_due" event the screen shows, and the next JOIN tries
// again.
var ErrNothingDue = errors.New("no consultation now")
