// Command fleetctl is the fleet manager's tool: fleet keys, signed configs
// and commands, and over the fleet's MQTT broker: push a config and see who
// applied it, status of every unit, live events, commands. See README.md
// ("Fleet") and fleetctl COMMAND --help; the broker settings are described
// at brokerSettings.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fleetctl:", err)
		os.Exit(1)
	}
}
