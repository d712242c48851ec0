// Command tickstream serves live quotes over WebSocket as RFC 6902 JSON
// Patch. Run it with no configuration for a development server: simulated
// prices, 20 instruments and a printed demo token.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tickstream/tickstream/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	stop()
	var cerr *config.Error
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return
	case errors.As(err, &cerr):
		fmt.Fprintln(os.Stderr, "tickstream:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "tickstream:", err)
		os.Exit(1)
	}
}
