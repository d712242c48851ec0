// Command orchestrate runs tickstream's load scenarios (bench/run): it
// builds the server and the load generator, pins them to different cores,
// samples the server's memory and CPU, and writes results/*.json and the
// results table of BENCHMARKS.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench/run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	smoke := fs.Bool("smoke", false, "300 connections for 10 s; fail on any failed connection or mismatch")
	out := fs.String("out", "results", "directory for the JSON results")
	doc := fs.String("doc", "BENCHMARKS.md", "file whose results table is rewritten (empty: none)")
	tableOnly := fs.Bool("table", false, "only rewrite the results table from the JSON files in -out")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: bench/run [-smoke] [scenario ...]\nscenarios: %v\n", scenarioNames())
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tableOnly {
		all, err := readResults(*out)
		if err != nil {
			return err
		}
		return updateDoc(*doc, all)
	}
	names := fs.Args()
	if *smoke {
		names = []string{"smoke"}
	} else if len(names) == 0 {
		names = scenarioNames()
	}
	for _, n := range names {
		if _, ok := scenarios[n]; !ok {
			return fmt.Errorf("unknown scenario %q (have %v)", n, scenarioNames())
		}
	}
	bin, err := os.MkdirTemp("", "tickbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bin)
	env, err := newEnv(ctx, bin, stderr)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	var results []Result
	for _, n := range names {
		fmt.Fprintf(stderr, "== %s\n", n)
		rs, err := scenarios[n](ctx, env)
		if err != nil {
			return fmt.Errorf("scenario %s: %w", n, err)
		}
		for _, r := range rs {
			if err := writeJSON(filepath.Join(*out, r.Name+".json"), r); err != nil {
				return err
			}
			fmt.Fprintln(stdout, r.Summary())
		}
		results = append(results, rs...)
	}
	if *smoke {
		return checkSmoke(results[0])
	}
	if *doc != "" {
		all, err := readResults(*out)
		if err != nil {
			return err
		}
		return updateDoc(*doc, all)
	}
	return nil
}

func scenarioNames() []string {
	var ns []string
	for n := range scenarios {
		if n != "smoke" {
			ns = append(ns, n)
		}
	}
	slices.SortFunc(ns, func(a, b string) int { return order[a] - order[b] })
	return ns
}

var order = map[string]int{"connect": 0, "fanout": 1, "slow": 2, "churn": 3, "knee": 4, "cluster": 5, "cluster-slow-ticks": 6}
