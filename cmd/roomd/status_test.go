package main

import (
	"github.com/konsult/konsult/appliance/agent"
	"github.com/konsult/konsult/appliance/unit"
)

// status is GET /v1/status as roomd serves it, with the fleet part typed.
type status struct {
	unit.Status
	Fleet *agent.LocalStatus `json:"fleet,omitempty"`
}
