// Command roomd is the daemon on a Konsult room unit. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
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
