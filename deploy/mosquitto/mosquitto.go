// Package mosquitto holds the shipped Mosquitto configuration and ACL, so that
// the fleet tool renders, and the tests run, exactly the text that ships.
package mosquitto

import _ "embed"

// Conf is mosquitto.conf as shipped.
//
//go:embed mosquitto.conf
var Conf string

// ACL is the shipped acl file: the fleet manager's line and the per-unit %u
// patterns, without any group blocks.
//
//go:embed acl
var ACL string
