//go:build race

package raceflag

// Enabled: this binary was built with the race detector.
const Enabled = true
