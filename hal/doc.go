// Package hal is the room unit's hardware layer, built on periph.io.
//
// Each sub-package owns one kind of part (button, led, shutter) and talks to
// it through periph's gpio interfaces, so the same code runs on a Raspberry
// Pi (gpioioctl, bcm283x), on any Linux gpiochip, and on the simulated board
// in hal/sim, whose pins are periph gpiotest pins.
//
// Wiring convention (see README "Wiring"): every input is active-low with a
// pull-up, and every output is active-high, so a released or unpowered GPIO
// means "button not pressed", "LED off" and "shutter closed".
package hal
