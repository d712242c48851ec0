package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"runtime"
	"time"
)

// run parses the command line, opens the connections, holds the load for
// -duration after the last one opened (or until ctx ends: SIGINT), stops
// churn and dials, checks every document against REST, closes everything
// and writes the summary. args include the program name.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args[1:], getenv, stderr)
	if err != nil {
		return err
	}
	rest, err := newREST(cfg)
	if err != nil {
		return err
	}
	pool, err := rest.instruments(ctx)
	if err != nil {
		return err
	}
	if len(pool) < cfg.symbolsPool {
		fmt.Fprintf(stderr, "tickload: the server serves %d instruments; -symbols-pool %d becomes %d\n", len(pool), cfg.symbolsPool, len(pool))
		cfg.symbolsPool = len(pool)
	}
	if cfg.symbolsPerConn > cfg.symbolsPool {
		return fmt.Errorf("-symbols-per-conn %d: the server serves only %d instruments", cfg.symbolsPerConn, cfg.symbolsPool)
	}
	pool = pool[:cfg.symbolsPool]

	st := newStats()
	l := newLoader(cfg, newDialer(cfg), st, pool)
	defer l.closeAll()

	progressCtx, stopProgress := context.WithCancel(ctx)
	defer stopProgress()
	if !cfg.json {
		go progress(progressCtx, stderr, st, cfg.conns)
	}

	began, cpuBegan := time.Now(), cpuTime()
	l.open(ctx)
	l.initial.Wait()
	windowStart, base := time.Now(), st.sum(false)
	if ctx.Err() == nil {
		churnCtx, stopChurn := context.WithCancel(ctx)
		churnDone := make(chan struct{})
		go func() {
			defer close(churnDone)
			if cfg.churn > 0 {
				l.churn(churnCtx)
			}
		}()
		select {
		case <-ctx.Done():
		case <-time.After(cfg.duration):
		}
		stopChurn()
		<-churnDone // no connection is churned after this
	}
	end, final, cpu := time.Now(), st.sum(true), cpuTime()-cpuBegan
	stopProgress()
	open := st.open.Load()
	l.stopDials()

	// The check runs even after SIGINT: it is what makes a run's numbers
	// trustworthy, and it is bounded by -check-wait.
	checkCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.checkWait+2*cfg.timeout)
	v := l.verify(checkCtx, rest, cfg.checkWait)
	cancel()
	l.closeAll()

	window := end.Sub(windowStart)
	s := summary{
		URL: cfg.wsURL, Conns: cfg.conns,
		Connected: st.connected.Load(), Failed: st.failed.Load(), Failures: st.failuresByReason(), Open: open,
		Messages: final.messages, Updates: final.updates, Bytes: final.bytes, WireBytes: final.wire,
		Latency: percentiles(final.latency), Connect: st.connectPercentiles(),
		Mismatches: v.mismatches, Verified: v.verified, Unverified: v.unverified, Inconclusive: v.inconclusive,
		Errors: final.errors, Closes: st.closesByCode(), Reconnects: st.reconnects.Load(), Churned: st.churned.Load(),
		NegLatency: final.negative,
		DurationS:  seconds(window), ElapsedS: seconds(end.Sub(began)),
		UpdatesPerS:   rate(final.updates-base.updates, window),
		MessagesPerS:  rate(final.messages-base.messages, window),
		WireBytesPerS: rate(final.wire-base.wire, window),
		SymbolsPool:   cfg.symbolsPool, SymbolsPerConn: cfg.symbolsPerConn,
		CPUPercent: cpuPercent(cpu, end.Sub(began)),
	}
	if v.err != nil {
		s.CheckError = v.err.Error()
	}
	for _, p := range st.problemList() {
		fmt.Fprintln(stderr, "tickload: problem:", p)
	}
	for _, d := range v.details {
		fmt.Fprintln(stderr, "tickload: mismatch:", d)
	}
	if s.CPUPercent > 90*float64(runtime.GOMAXPROCS(0)) {
		fmt.Fprintf(stderr, "tickload: warning: tickload used %.0f%% CPU on %d CPUs: latency includes its own queueing; run it on more or other cores\n",
			s.CPUPercent, runtime.GOMAXPROCS(0))
	}
	if cfg.json {
		return writeJSON(stdout, s)
	}
	return writeText(stdout, s)
}

// cpuPercent is CPU time over wall time, where 100 is one core busy.
func cpuPercent(cpu, wall time.Duration) float64 {
	if wall <= 0 {
		return 0
	}
	return math.Round(cpu.Seconds() / wall.Seconds() * 100)
}

// seconds rounds d to milliseconds, in seconds.
func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }
