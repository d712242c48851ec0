// Package config loads tickstream's one Config from environment variables
// and command-line flags, and validates it once.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is every setting of the server. Each field names its environment
// variable and default; a flag with the lower-case, dashed name
// (HTTP_ADDR: -http-addr) overrides the variable.
type Config struct {
	HTTPAddr                string        // HTTP_ADDR, ":8080": listen address
	JWTSecret               string        // JWT_SECRET, "": HS256 secret (at least 32 bytes); empty means development mode with a random secret and a printed demo token
	PriceUpdateInterval     time.Duration // PRICE_UPDATE_INTERVAL, 4s: simulator tick (10ms to 1h)
	PriceOscillationPercent float64       // PRICE_OSCILLATION_PERCENT, 0.01: price moves within ± this fraction of the base price
	SimUpdate               string        // SIM_UPDATE, "subset": which active symbols move each tick, "subset" or "all"
	InstrumentsFile         string        // INSTRUMENTS_FILE, "": CSV of instruments; empty means the 20 built-in ones
	SyntheticSymbols        int           // SYNTHETIC_SYMBOLS, 0: generated instruments added for load tests
	WSMaxConnections        int           // WS_MAX_CONNECTIONS, 10000: beyond it handshakes get 503
	WSMaxSymbols            int           // WS_MAX_SYMBOLS, 100: symbols per connection
	WSIdleTimeout           time.Duration // WS_IDLE_TIMEOUT, 30m: a connection with no frame from the client for this long is closed
	WSHealthCheckInterval   time.Duration // WS_HEALTH_CHECK_INTERVAL, 30s: ping interval; a missed pong closes the connection
	WSWriteTimeout          time.Duration // WS_WRITE_TIMEOUT, 2s: deadline of one write to a client
	WSCircuitBreaker        int           // WS_CIRCUIT_BREAKER_THRESHOLD, 5: write deadlines in a row without draining before close 4008 (slow consumer)
	WSCompression           bool          // WS_COMPRESSION, on: accept permessage-deflate (RFC 7692) when the client offers it
	WSEventLoop             bool          // WS_EVENT_LOOP, on: idle connections are watched by epoll instead of a reader goroutine each
	ShutdownTimeout         time.Duration // SHUTDOWN_TIMEOUT, 10s: how long shutdown waits for clients to close
	DebugAddr               string        // DEBUG_ADDR, "": when set, net/http/pprof listens there (keep it on loopback)
	LogLevel                slog.Level    // LOG_LEVEL, info: debug, info, warn or error
	LogFormat               string        // LOG_FORMAT, "json": json or text
}

// DevAuth reports whether tokens are signed with a random development
// secret (no JWT_SECRET).
func (c Config) DevAuth() bool { return c.JWTSecret == "" }

// Error is an invalid setting. It names the variable and never holds a
// secret's value.
type Error struct {
	Var    string
	Value  string
	Reason string
}

func (e *Error) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("invalid %s: %s", e.Var, e.Reason)
	}
	return fmt.Sprintf("invalid %s=%q: %s", e.Var, e.Value, e.Reason)
}

// setting is one variable: its name, default, help, and how to parse and
// check a value into the Config.
type setting struct {
	env, def, help string
	secret         bool
	set            func(c *Config, v string) error
}

func settings() []setting {
	return []setting{
		{"HTTP_ADDR", ":8080", "listen address", false, func(c *Config, v string) error {
			if _, _, err := net.SplitHostPort(v); err != nil {
				return errors.New("not host:port")
			}
			c.HTTPAddr = v
			return nil
		}},
		{"JWT_SECRET", "", "HS256 secret, at least 32 bytes (empty: development mode, random secret and a printed demo token)", true, func(c *Config, v string) error {
			if v != "" && len(v) < 32 {
				return errors.New("must be at least 32 bytes")
			}
			c.JWTSecret = v
			return nil
		}},
		{"PRICE_UPDATE_INTERVAL", "4s", "simulator tick, 10ms to 1h", false, duration(10*time.Millisecond, time.Hour, func(c *Config) *time.Duration { return &c.PriceUpdateInterval })},
		{"PRICE_OSCILLATION_PERCENT", "0.01", "prices move within ± this fraction of the base price (0.01 = 1%)", false, func(c *Config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f > 0 && f < 1) {
				return errors.New("must be a number above 0 and below 1")
			}
			c.PriceOscillationPercent = f
			return nil
		}},
		{"SIM_UPDATE", "subset", "subset: a random subset of active symbols moves each tick; all: every one", false, func(c *Config, v string) error {
			if v != "subset" && v != "all" {
				return errors.New(`must be "subset" or "all"`)
			}
			c.SimUpdate = v
			return nil
		}},
		{"INSTRUMENTS_FILE", "", "CSV with header symbol,name,type,base_price,volume,market_cap (empty: 20 built-in instruments)", false, func(c *Config, v string) error {
			if v != "" {
				if _, err := os.Stat(v); err != nil {
					return errors.New("file not readable")
				}
			}
			c.InstrumentsFile = v
			return nil
		}},
		{"SYNTHETIC_SYMBOLS", "0", "generated instruments SYN00001... added for load tests, 0 to 100000", false, integer(0, 100_000, func(c *Config) *int { return &c.SyntheticSymbols })},
		{"WS_MAX_CONNECTIONS", "10000", "open WebSocket connections; beyond it handshakes get 503", false, integer(1, 1_000_000, func(c *Config) *int { return &c.WSMaxConnections })},
		{"WS_MAX_SYMBOLS", "100", "symbols per connection", false, integer(1, 10_000, func(c *Config) *int { return &c.WSMaxSymbols })},
		{"WS_IDLE_TIMEOUT", "30m", "close a connection that sent no frame for this long", false, duration(time.Second, 0, func(c *Config) *time.Duration { return &c.WSIdleTimeout })},
		{"WS_HEALTH_CHECK_INTERVAL", "30s", "ping interval; a pong must arrive before the next ping", false, duration(100*time.Millisecond, 0, func(c *Config) *time.Duration { return &c.WSHealthCheckInterval })},
		{"WS_WRITE_TIMEOUT", "2s", "deadline of one write to a client, 10ms to 1m", false, duration(10*time.Millisecond, time.Minute, func(c *Config) *time.Duration { return &c.WSWriteTimeout })},
		{"WS_CIRCUIT_BREAKER_THRESHOLD", "5", "write deadlines in a row without draining before a client is closed with 4008 (slow consumer), 1 to 100", false, integer(1, 100, func(c *Config) *int { return &c.WSCircuitBreaker })},
		{"WS_COMPRESSION", "on", "on: accept permessage-deflate (RFC 7692) when a client offers it; off: never compress", false, onOff(func(c *Config) *bool { return &c.WSCompression })},
		{"WS_EVENT_LOOP", "on", "on: epoll watches idle connections (Linux); off: a reader goroutine per connection", false, onOff(func(c *Config) *bool { return &c.WSEventLoop })},
		{"SHUTDOWN_TIMEOUT", "10s", "how long shutdown waits for clients to close", false, duration(0, 0, func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
		{"DEBUG_ADDR", "", "listen address of the net/http/pprof profiler, e.g. 127.0.0.1:6060 (empty: off)", false, func(c *Config, v string) error {
			if v != "" {
				if _, _, err := net.SplitHostPort(v); err != nil {
					return errors.New("not host:port")
				}
			}
			c.DebugAddr = v
			return nil
		}},
		{"LOG_LEVEL", "info", "debug, info, warn or error", false, func(c *Config, v string) error {
			return c.LogLevel.UnmarshalText([]byte(v))
		}},
		{"LOG_FORMAT", "json", "json or text", false, func(c *Config, v string) error {
			if v != "json" && v != "text" {
				return errors.New(`must be "json" or "text"`)
			}
			c.LogFormat = v
			return nil
		}},
	}
}

func duration(min, max time.Duration, field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return errors.New("not a duration such as 500ms, 4s or 30m")
		}
		switch {
		case d < min:
			return fmt.Errorf("must be at least %s", min)
		case max > 0 && d > max:
			return fmt.Errorf("must be at most %s", max)
		}
		*field(c) = d
		return nil
	}
}

func onOff(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		switch strings.ToLower(v) {
		case "on":
			*field(c) = true
		case "off":
			*field(c) = false
		default:
			return errors.New(`must be "on" or "off"`)
		}
		return nil
	}
}

func integer(min, max int, field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return errors.New("not an integer")
		}
		if n < min || n > max {
			return fmt.Errorf("must be between %d and %d", min, max)
		}
		*field(c) = n
		return nil
	}
}

// flagName turns HTTP_ADDR into http-addr.
func flagName(env string) string { return strings.ReplaceAll(strings.ToLower(env), "_", "-") }

// Load reads the configuration: a flag in args (without the program name)
// wins over the environment variable (read through getenv), which wins
// over the default. -h writes the usage to usage and returns flag.ErrHelp;
// any invalid value returns an *Error.
func Load(args []string, getenv func(string) string, usage io.Writer) (Config, error) {
	all := settings()
	fs := flag.NewFlagSet("tickstream", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fromFlag := make(map[string]*string, len(all))
	for _, s := range all {
		fromFlag[s.env] = fs.String(flagName(s.env), "", "")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeUsage(usage, all)
			return Config{}, err
		}
		return Config{}, &Error{Var: "command line", Reason: err.Error() + " (see -h)"}
	}
	if fs.NArg() > 0 {
		return Config{}, &Error{Var: "command line", Reason: fmt.Sprintf("unexpected argument %q (see -h)", fs.Arg(0))}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })

	var c Config
	for _, s := range all {
		v, src := s.def, s.env
		if given[flagName(s.env)] {
			v, src = *fromFlag[s.env], "-"+flagName(s.env)
		} else if e := getenv(s.env); e != "" {
			v = e
		}
		if err := s.set(&c, strings.TrimSpace(v)); err != nil {
			shown := v
			if s.secret {
				shown = ""
			}
			return Config{}, &Error{Var: src, Value: shown, Reason: err.Error()}
		}
	}
	return c, nil
}

func writeUsage(w io.Writer, all []setting) {
	fmt.Fprintf(w, "Usage: tickstream [flags]\n\nEvery setting is an environment variable and a flag; a flag wins.\n\n")
	for _, s := range all {
		def := s.def
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(w, "  -%s  (%s, default %s)\n    \t%s\n", flagName(s.env), s.env, def, s.help)
	}
}
