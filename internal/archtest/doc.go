// Package archtest fails the build when an import breaks the layer rules of
// docs/DESIGN.md ("Layers and imports"). The rules
// are written once, in Check (rules.go), so the doc, the test and a reader
// agree on one list.
package archtest
