package appliance

import "errors"

// ErrNothingDue is what a Conference's Join returns when the room has
// nothing to enter now: no consultation is due and there is no standing
// meeting (a fleet unit whose fleetd has nothing for it). It is not a
// fault: the unit goes back to idle, says so in Status.Notice and in a
// "call"/"nothing_due" event the screen shows, and the next JOIN tries
// again.
var ErrNothingDue = errors.New("no consultation now")

// ErrRestarting is what a CallLock's Acquire returns when the unit is about
// to restart into an installed update. Like ErrNothingDue it is a notice,
// not a fault: the unit stays idle, says so in Status.Notice and in a
// "call"/"restarting" event, and the screen asks to press JOIN again once
// the unit is back.
var ErrRestarting = errors.New("the unit is restarting to finish an update: press JOIN again in a minute or two")
