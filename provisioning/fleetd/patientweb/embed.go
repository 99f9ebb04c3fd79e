// Package patientweb is the patient's page: static files (HTML, CSS,
// plain JavaScript on livekit-client, no framework), embedded in fleetd
// and servable by any web server (docs/FLEETD.md, "The patient's page").
package patientweb

import "embed"

// Files are index.html and the assets it loads.
//
//go:embed index.html patient.js patient.css i18n.js
var Files embed.FS
