// Command roomd is the daemon on a Konsult room unit. See README.md.
//
// It only wires: main parses the flags (run.go), opens the real parts and
// hands them to an appliance/unit.Unit, which builds and runs the unit's
// brain, and to the fleet agent (fleet.go), then waits for a signal, a
// restart or a factory reset.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "dev"

// exitRestart is roomd's exit status when the fleet's reboot command asks a
// real unit to restart, or after a factory reset: the service manager
// (systemd Restart=always) starts it again. In --sim the unit restarts
// inside the process instead.
const exitRestart = 75

var (
	// errRestart asks main to exit with exitRestart.
	errRestart = errors.New("restart requested by the fleet")
	// errFactoryReset ends run after a factory reset: systemd starts roomd
	// again (exitRestart) as a unit on its first boot; --sim starts over
	// inside the process.
	errFactoryReset = errors.New("factory reset: starting again as a new unit")
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, errRestart) || errors.Is(err, errFactoryReset) {
		// The fleet's reboot command or a factory reset: the service
		// manager starts roomd again (exitRestart, documented in README.md).
		fmt.Fprintln(os.Stderr, "roomd:", err)
		os.Exit(exitRestart)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "roomd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	for {
		err := runOnce(ctx, args, stdout, stderr)
		if errors.Is(err, errFactoryReset) && slices.Contains(args, "--sim") && ctx.Err() == nil && os.Getenv("NOTIFY_SOCKET") == "" {
			// A simulated unit has no service manager to start it again.
			// Under systemd (the image's boot test runs --sim) it has: it
			// was told STOPPING=1, and would kill a roomd that carried on.
			fmt.Fprintln(stdout, "roomd: factory reset done; starting again as a new unit")
			continue
		}
		return err
	}
}
