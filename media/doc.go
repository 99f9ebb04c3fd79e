// Package media holds everything that carries the room's picture and sound:
// capture, the privacy gate (media/gate) that sits before any encoder, and
// the conference connectors. Connectors are built with the appliance's gate
// and must ask it before a raw frame goes any further.
package media
