package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// config is every setting of one run, parsed from the command line once.
type config struct {
	wsURL    string // ws(s)://host:port/ws/quotes, from -url
	httpBase string // http(s)://host:port, for /v1/instruments and /v1/quotes

	token  string // -token (or TICKLOAD_TOKEN): one token for every connection
	secret string // -secret (or TICKLOAD_SECRET): mint one token per connection instead

	conns          int           // -conns, 100
	rate           float64       // -rate, 1000: connections opened per second
	symbolsPerConn int           // -symbols-per-conn, 5
	symbolsPool    int           // -symbols-pool, 50: the first P instruments of /v1/instruments
	duration       time.Duration // -duration, 30s: measured from when the last connection opened
	slow           int           // -slow, 0: connections that stop reading after their snapshot
	churn          float64       // -churn, 0: connections closed and reopened per second
	sourceIPs      []netip.Addr  // -source-ips, none: local addresses the sockets are spread over
	compress       bool          // -compress: offer permessage-deflate
	json           bool          // -json: the last line of stdout is the summary as JSON
	reconnect      bool          // -reconnect: reopen connections the server closed
	timeout        time.Duration // -timeout, 10s: handshake (and REST request) timeout
	checkWait      time.Duration // -check-wait, 5s: how long the final check lets lagging connections catch up
}

// usageError is a bad command line; main exits 2 on it. The message names
// the flag.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func badFlag(name, format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf("-%s: %s", name, fmt.Sprintf(format, a...))}
}

// maxSourceIPs bounds -source-ips so that a typo such as 10.0.0.1-10.9.0.1
// fails instead of allocating millions of dialers.
const maxSourceIPs = 4096

// parseConfig reads args (without the program name). Secrets may come from
// the environment so that they stay out of the process list; a flag wins.
// -h writes the usage to stderr and returns flag.ErrHelp.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("tickload", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c config
	rawURL := fs.String("url", "ws://127.0.0.1:8080", "server base URL, ws:// or wss://")
	fs.StringVar(&c.token, "token", getenv("TICKLOAD_TOKEN"), "bearer token used by every connection (env TICKLOAD_TOKEN)")
	fs.StringVar(&c.secret, "secret", getenv("TICKLOAD_SECRET"), "HS256 secret: mint one token per connection, sub load-N (env TICKLOAD_SECRET)")
	fs.IntVar(&c.conns, "conns", 100, "connections to open")
	fs.Float64Var(&c.rate, "rate", 1000, "connections opened per second")
	fs.IntVar(&c.symbolsPerConn, "symbols-per-conn", 5, "symbols each connection subscribes to")
	fs.IntVar(&c.symbolsPool, "symbols-pool", 50, "use the first P symbols of /v1/instruments")
	fs.DurationVar(&c.duration, "duration", 30*time.Second, "how long to run after the last connection opened")
	fs.IntVar(&c.slow, "slow", 0, "connections that stop reading after their snapshot")
	fs.Float64Var(&c.churn, "churn", 0, "connections closed and reopened per second")
	ips := fs.String("source-ips", "", "local addresses to spread sockets over: a range 127.0.0.1-127.0.0.8 or a comma list")
	fs.BoolVar(&c.compress, "compress", false, "offer permessage-deflate")
	fs.BoolVar(&c.json, "json", false, "print the summary as one JSON object, the last line of stdout")
	fs.BoolVar(&c.reconnect, "reconnect", false, "reopen connections the server closes, with backoff 100ms..2s")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "handshake timeout")
	fs.DurationVar(&c.checkWait, "check-wait", catchUpTime, "how long the final check lets lagging connections catch up with /v1/quotes (raise it when the run overloads the server or tickload)")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "Usage: tickload [flags]")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return config{}, err
		}
		return config{}, &usageError{msg: err.Error()}
	}
	if fs.NArg() > 0 {
		return config{}, &usageError{msg: fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	var err error
	if c.wsURL, c.httpBase, err = parseURL(*rawURL); err != nil {
		return config{}, badFlag("url", "%v", err)
	}
	if c.sourceIPs, err = parseSourceIPs(*ips); err != nil {
		return config{}, badFlag("source-ips", "%v", err)
	}
	return c, c.validate()
}

func (c config) validate() error {
	switch {
	case c.token == "" && c.secret == "":
		return &usageError{msg: "-token or -secret is required"}
	case c.token != "" && c.secret != "":
		return badFlag("secret", "give -token or -secret, not both")
	case c.conns < 1:
		return badFlag("conns", "must be at least 1, got %d", c.conns)
	case !(c.rate > 0):
		return badFlag("rate", "must be above 0, got %v", c.rate)
	case c.symbolsPool < 1:
		return badFlag("symbols-pool", "must be at least 1, got %d", c.symbolsPool)
	case c.symbolsPerConn < 1 || c.symbolsPerConn > c.symbolsPool:
		return badFlag("symbols-per-conn", "must be between 1 and -symbols-pool (%d), got %d", c.symbolsPool, c.symbolsPerConn)
	case c.duration <= 0:
		return badFlag("duration", "must be above 0, got %v", c.duration)
	case c.slow < 0 || c.slow > c.conns:
		return badFlag("slow", "must be between 0 and -conns (%d), got %d", c.conns, c.slow)
	case c.churn < 0:
		return badFlag("churn", "must not be negative, got %v", c.churn)
	case c.churn > 0 && c.slow == c.conns:
		return badFlag("churn", "needs connections that are not -slow")
	case c.checkWait <= 0:
		return badFlag("check-wait", "must be above 0, got %v", c.checkWait)
	case c.timeout <= 0:
		return badFlag("timeout", "must be above 0, got %v", c.timeout)
	}
	return nil
}

// parseURL turns the -url base into the WebSocket endpoint and the REST
// base. A path of /ws/quotes is accepted and dropped, so that the URL a
// browser client uses works too.
func parseURL(raw string) (wsURL, httpBase string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", err
	}
	var scheme string
	switch u.Scheme {
	case "ws":
		scheme = "http"
	case "wss":
		scheme = "https"
	default:
		return "", "", fmt.Errorf("scheme must be ws or wss, got %q", raw)
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("no host in %q", raw)
	}
	path := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/ws/quotes")
	if u.RawQuery != "" {
		return "", "", fmt.Errorf("no query allowed in %q", raw)
	}
	return u.Scheme + "://" + u.Host + path + "/ws/quotes", scheme + "://" + u.Host + path, nil
}

// parseSourceIPs reads a comma list whose items are addresses or inclusive
// ranges first-last of one family, in order, without duplicates.
func parseSourceIPs(s string) ([]netip.Addr, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		first, last, isRange := strings.Cut(item, "-")
		a, err := netip.ParseAddr(strings.TrimSpace(first))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		b := a
		if isRange {
			if b, err = netip.ParseAddr(strings.TrimSpace(last)); err != nil {
				return nil, fmt.Errorf("%q: %w", item, err)
			}
			if a.Is4() != b.Is4() {
				return nil, fmt.Errorf("%q: both ends must be IPv4 or both IPv6", item)
			}
			if b.Less(a) {
				return nil, fmt.Errorf("%q: the range ends before it starts", item)
			}
		}
		for ip := a; ip.IsValid() && !b.Less(ip); ip = ip.Next() {
			if seen[ip] {
				return nil, fmt.Errorf("%s listed twice", ip)
			}
			seen[ip] = true
			out = append(out, ip)
			if len(out) > maxSourceIPs {
				return nil, fmt.Errorf("more than %d addresses", maxSourceIPs)
			}
		}
	}
	return out, nil
}
