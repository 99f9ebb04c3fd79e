// Package fleetwalk holds tests that run the fleet manager's documented
// path as the docs write it: the shell blocks between
// <!-- NAME:begin --> and <!-- NAME:end --> markers in README.md,
// docs/*.md and deploy/mosquitto/README.md, against real Mosquitto, the real
// fleetctl and real roomd --sim units. The package has no code of its own:
// the docs are its input.
package fleetwalk
