package report

import (
	"strconv"
	"time"
)

// The unit cannot see the fleet manager's servers: its report states the
// shipped defaults of fleetd and the broker. fleetctl privacy-report reads
// the files they really run with (--fleetd-config, --broker-config) and
// restates those lines from them, saying which file each comes from.
const (
	flowTelemetry    = "Fleet telemetry"
	labelBrokerKeeps = "retention on the broker"
	labelFleetdKeeps = "retention at the fleet service"
)

// SetFleetdRetention restates what fleetd keeps from its config file:
// audit and records are its [retention] (defaults filled in).
func (r *Report) SetFleetdRetention(file string, audit, records time.Duration) {
	v := "from " + file + ": audit records kept by fleetd for " + formatDays(audit) + " ([retention] audit), pruned only as far as the unit's own checkpoints account for; its log of tokens issued, patient joins and ended consultations for " +
		formatDays(records) + " ([retention] records); events are not stored by the fleet service (fleetctl watch shows them live)"
	r.restate(labelFleetdKeeps, v, false)
}

// SetBrokerRetention restates what the broker keeps from its
// mosquitto.conf's retention options (deploy/mosquitto.ReadRetention:
// option name to value, Mosquitto's defaults filled in). A queue kept
// without end (no persistent_client_expiration) or without a byte bound
// is flagged.
func (r *Report) SetBrokerRetention(file string, o map[string]string) {
	v := "from " + file + ": "
	if o["persistence"] == "true" {
		v += "kept on the broker's disk"
		if o["persistence_location"] != "" {
			v += " in " + o["persistence_location"]
		}
		v += ", saved every " + o["autosave_interval"] + " s (persistence)"
	} else {
		v += "kept in the broker's memory only, gone at its restart (persistence false)"
	}
	if o["retain_available"] == "false" {
		v += "; no retained messages (retain_available false)"
	} else {
		v += "; status and reported state: the latest value only (retained), replaced at each change"
	}
	bytes, _ := strconv.ParseInt(o["max_queued_bytes"], 10, 64)
	v += "; events and audit records: queued for their readers, up to " + o["max_queued_messages"] + " messages"
	if bytes > 0 {
		v += " and " + formatBytes(bytes)
	} else {
		v += " and no byte limit"
	}
	v += " a reader (max_queued_messages, max_queued_bytes)"
	flag := bytes <= 0
	if e := o["persistent_client_expiration"]; e != "" {
		v += ", a disconnected reader's queue dropped after " + e + " (persistent_client_expiration)"
	} else {
		v += ", a disconnected reader's queue never dropped (no persistent_client_expiration)"
		flag = true
	}
	r.restate(labelBrokerKeeps, v, flag)
}

func (r *Report) restate(label, value string, flag bool) {
	for i := range r.Flows {
		if r.Flows[i].Name != flowTelemetry {
			continue
		}
		for j := range r.Flows[i].Items {
			if it := &r.Flows[i].Items[j]; it.Label == label {
				it.Value, it.Flag = value, flag
				return
			}
		}
		r.Flows[i].Items = append(r.Flows[i].Items, Item{label, value, flag})
	}
}
