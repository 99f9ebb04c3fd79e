// Package archtest fails the build when an import breaks the layer rules of
// docs/DESIGN.md ("Layers and imports"). The rules
// are written once, in Check (rules.go), so the doc, the test and a reader
// agree on one list. It also holds the repository to its size figures
// (size.go): no production file over 700 lines, no function over 120
// unless its comment says why it reads better whole, cmd/roomd at most 800
// non-test lines.
package archtest
