// Command patient serves a local web page that joins a LiveKit room as the
// far-end person (the patient), so a newcomer can see and hear the simulated
// room unit in their own browser. `make run` starts it. Loopback only.
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
		fmt.Fprintln(os.Stderr, "patient:", err)
		os.Exit(1)
	}
}
