// Package whip is a WHIP client (WebRTC-HTTP Ingestion Protocol, RFC 9725)
// for github.com/pion/webrtc/v4. It publishes a PeerConnection's tracks to a
// WHIP endpoint, such as LiveKit's "POST /whip/v1" with a LiveKit access
// token as bearer token.
//
// The caller owns the PeerConnection: it builds it (with the ICE servers
// from Client.ICEServers or Client.Preflight), adds its tracks, then calls
// Client.Publish, Session.WaitConnected and finally Session.Delete and
// PeerConnection.Close.
//
// # Protocol
//
// Publish creates the SDP offer, waits for ICE gathering to complete (so
// no trickle is needed) and POSTs it as application/sdp with
// "Authorization: Bearer <token>". It expects 201 Created with a Location
// (resolved against the final URL after 307/308 redirects), an optional
// ETag, optional Accept-Patch, optional Link rel="ice-server" headers and
// the SDP answer. After a 201, any failure DELETEs the session resource.
//
// ICE servers announced in Link headers of the 201 response arrive after
// the offer was gathered. They are merged into the PeerConnection with
// SetConfiguration (pion allows changing ICEServers after creation; it
// applies them at the next gathering, i.e. RestartICE) and remembered by the
// Client, so Client.ICEServers returns them for the next PeerConnection
// (for example when publishing again after ErrICEFailed). Servers that
// announce them on OPTIONS are handled by Preflight before the
// PeerConnection is built.
//
// Trickle ICE and ICE restarts use PATCH with
// application/trickle-ice-sdpfrag (RFC 8840): trickle carries If-Match with
// the ETag, an ICE restart carries "If-Match: *" as RFC 9725 requires and
// takes the new ETag from the 200 response. They are attempted only if the
// server did not exclude them with Accept-Patch; a 405, 415 or 501 answer is
// remembered and later calls fail fast with ErrNotSupported.
//
// # Security
//
//   - The token is never logged and never appears in an error string.
//   - Plain http is refused to any host that is not loopback ("localhost",
//     127.0.0.0/8, ::1), and to all hosts with Config.RequireTLS; https uses
//     normal certificate verification, which cannot be disabled here.
//   - With Config.AllowedHosts, any other host (endpoint, redirect target,
//     session Location) is refused before any DNS lookup or connection.
//   - On redirects, the token is only forwarded to the endpoint's own host
//     name or to hosts on the allow-list; it is dropped otherwise (stricter
//     than net/http, which keeps it for subdomains).
//
// # Errors
//
// Errors wrap sentinels (ErrTokenRejected, ErrForbidden, ErrNotFound,
// ErrBusy, ErrServer, ErrNoAnswer, ErrCertificate, ErrInsecureScheme,
// ErrHostNotAllowed, ErrICEFailed, ErrDTLSFailed, ...) for errors.Is, and
// unexpected statuses are *HTTPError values for errors.As.
package whip
