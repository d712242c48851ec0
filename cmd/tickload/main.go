// Command tickload is tickstream's load generator: it opens many WebSocket
// connections to a tickstream server, keeps each connection's document by
// applying its patches, measures update latency without coordinated
// omission, and at the end checks every document against the REST API.
//
//	tickload -url ws://127.0.0.1:8080 -secret "$JWT_SECRET" -conns 2000 -duration 30s
//
// Connection i subscribes to -symbols-per-conn consecutive symbols of the
// first -symbols-pool instruments, from (i*K) mod P. Latency is arrival
// time minus the quote's last_updated, so tickload and the server must
// share a clock (same host, or NTP). With -json the last line of stdout is
// the summary (see summary in report.go); otherwise a readable summary
// follows a progress line per second on stderr. SIGINT ends the load early
// and still runs the final check; a second SIGINT kills the process.
//
// Exit status: 0 when it ran (mismatches included: the caller decides), 1
// when it could not start, 2 on a bad command line.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal ends the load and starts the final check; a second
	// one kills the process.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	stop()
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return
	case errors.As(err, &ue):
		fmt.Fprintln(os.Stderr, "tickload:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "tickload:", err)
		os.Exit(1)
	}
}
