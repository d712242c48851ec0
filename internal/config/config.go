// Package config loads tickstream's one Config from environment variables
// and command-line flags, and validates it once.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is every setting of the server. Each field names its environment
// variable and default; a flag with the lower-case, dashed name
// (HTTP_ADDR: -http-addr) overrides the variable. Load is the only way to
// fill one, so every Config a component sees has been validated.
type Config struct {
	// HTTPAddr (HTTP_ADDR, default ":8080") is the host:port the HTTP and
	// WebSocket server listens on.
	HTTPAddr string
	// JWTSecret (JWT_SECRET, default "") is the HS256 secret, at least 32
	// bytes. Empty means development mode: the caller signs tokens with a
	// random secret and prints a demo token. It never appears in an Error.
	JWTSecret string
	// PriceUpdateInterval (PRICE_UPDATE_INTERVAL, default 4s) is the
	// simulator tick, 10ms to 1h.
	PriceUpdateInterval time.Duration
	// PriceOscillationPercent (PRICE_OSCILLATION_PERCENT, default 0.01) is,
	// despite its name, a fraction: prices move within ± this share of the
	// base price (0.01 is ±1%). Above 0 and below 1.
	PriceOscillationPercent float64
	// SimUpdate (SIM_UPDATE, default "subset") says which active symbols
	// move each tick: "subset" (a random few, like a real market) or "all"
	// (every one, the worst case for load tests).
	SimUpdate string
	// InstrumentsFile (INSTRUMENTS_FILE, default "") is a CSV of
	// instruments; empty means the 20 built-in ones. When set it must exist.
	InstrumentsFile string
	// SyntheticSymbols (SYNTHETIC_SYMBOLS, default 0) is how many generated
	// instruments are added for load tests, 0 to 100000.
	SyntheticSymbols int
	// WSMaxConnections (WS_MAX_CONNECTIONS, default 10000) caps open
	// WebSocket connections; beyond it handshakes get 503. 1 to 1000000.
	WSMaxConnections int
	// WSMaxSymbols (WS_MAX_SYMBOLS, default 100) caps the symbols one
	// connection may subscribe to, 1 to 10000.
	WSMaxSymbols int
	// WSIdleTimeout (WS_IDLE_TIMEOUT, default 30m) closes a connection that
	// sent no frame for this long; at least 1s.
	WSIdleTimeout time.Duration
	// WSHealthCheckInterval (WS_HEALTH_CHECK_INTERVAL, default 30s) is the
	// ping interval; a pong missing by the next ping closes the connection.
	// At least 100ms.
	WSHealthCheckInterval time.Duration
	// WSWriteTimeout (WS_WRITE_TIMEOUT, default 2s) is the deadline of one
	// write to a client, 10ms to 1m.
	WSWriteTimeout time.Duration
	// WSCircuitBreaker (WS_CIRCUIT_BREAKER_THRESHOLD, default 5) is how many
	// write deadlines in a row, without draining, close a client with 4008
	// (slow consumer). 1 to 100.
	WSCircuitBreaker int
	// WSCompression (WS_COMPRESSION, default on) accepts permessage-deflate
	// (RFC 7692) when a client offers it.
	WSCompression bool
	// WSEventLoop (WS_EVENT_LOOP, default on) has epoll watch idle
	// connections instead of one reader goroutine each.
	WSEventLoop bool
	// ShutdownTimeout (SHUTDOWN_TIMEOUT, default 10s) is how long shutdown
	// waits for clients to close; at least 0.
	ShutdownTimeout time.Duration
	// DebugAddr (DEBUG_ADDR, default "") is where net/http/pprof listens;
	// empty means off. Keep it on loopback.
	DebugAddr string
	// LogLevel (LOG_LEVEL, default info) is debug, info, warn or error,
	// in any case.
	LogLevel slog.Level
	// LogFormat (LOG_FORMAT, default "json") is "json" or "text".
	LogFormat string

	// Security settings. At most one of JWTSecret, JWTPublicKeyFile and
	// JWTJWKSURL is set; none means development mode.

	// JWTPublicKeyFile (JWT_PUBLIC_KEY_FILE, default "") is a PEM public key
	// (RSA, ECDSA P-256/P-384 or Ed25519) that verifies RS*, ES256/ES384 or
	// EdDSA tokens. When set it must be a file.
	JWTPublicKeyFile string
	// JWTJWKSURL (JWT_JWKS_URL, default "") is an http(s) URL of a JSON Web
	// Key Set, fetched at start, cached, and refetched for an unknown kid.
	JWTJWKSURL string
	// JWTIssuer (JWT_ISSUER, default "") is the iss every token must carry;
	// empty means not checked.
	JWTIssuer string
	// JWTAudience (JWT_AUDIENCE, default "") must be among a token's aud;
	// empty means not checked.
	JWTAudience string
	// JWTLeeway (JWT_LEEWAY, default 30s) is the clock skew tolerated on
	// exp, nbf and iat, at the handshake and for live expiry; 0 to 10m.
	JWTLeeway time.Duration
	// AllowedOrigins (ALLOWED_ORIGINS, default "": the server's own host
	// only) lists the Origins, such as https://app.example.com, whose
	// browser pages may open a WebSocket; "*" allows any. Requests without
	// Origin (non-browser clients) are always allowed.
	AllowedOrigins []string
	// TrustedProxies (TRUSTED_PROXIES, default "") lists CIDRs of reverse
	// proxies whose X-Forwarded-For names the client, for per-IP limits.
	TrustedProxies []netip.Prefix
	// UserMaxConnections (USER_MAX_CONNECTIONS, default 10) caps the open
	// connections of one token subject on this instance; beyond it 429.
	UserMaxConnections int
	// WSHandshakeRatePerIP (WS_HANDSHAKE_RATE_PER_IP, default 20) is the
	// WebSocket handshakes per second one client IP may make, with a burst
	// of twice that; beyond it 429 with Retry-After. 0 turns it off.
	WSHandshakeRatePerIP float64
	// WSMessageRate (WS_MESSAGE_RATE, default 10) is the client messages per
	// second one connection may send, with a burst of twice that; beyond it
	// an error rate_limited, and close 4029 if the flood goes on.
	WSMessageRate float64
	// TLSCertFile and TLSKeyFile (TLS_CERT_FILE, TLS_KEY_FILE, default "")
	// are a PEM certificate chain and its key: when both are set the
	// server speaks https:// and wss:// itself. Set both or neither.
	TLSCertFile, TLSKeyFile string
	// HTTPReadHeaderTimeout (HTTP_READ_HEADER_TIMEOUT, default 5s) is how
	// long a client may take to send its request headers, so that slow
	// senders (slowloris) cannot hold connections open; 100ms to 1m.
	HTTPReadHeaderTimeout time.Duration
	// Scaling out over Redis (README, "Scaling out").

	// Broker (BROKER, default "memory") is "memory" (one instance, its
	// own simulator) or "redis" (several instances serving one market
	// through Redis, one of them publishing).
	Broker string
	// RedisURL (REDIS_URL, default "redis://127.0.0.1:6379") is the Redis
	// to use with BROKER=redis: redis:// or rediss:// (TLS), with a user
	// and password if any. A secret: never shown in an Error.
	RedisURL string
	// RedisPrefix (REDIS_PREFIX, default "tickstream:") starts every key
	// and channel, so several deployments can share one Redis. It must
	// not contain { or }: the keys carry their own hash tag.
	RedisPrefix string
	// RedisCluster (REDIS_CLUSTER, default false) says REDIS_URL is a
	// Redis Cluster; quotes then travel by sharded Pub/Sub.
	RedisCluster bool
	// FeedLeaseTTL (FEED_LEASE_TTL, default 3s) is how long the price
	// publisher's lease lasts without renewal: when the publishing
	// instance dies, another takes over within about this long. 300ms to 1m.
	FeedLeaseTTL time.Duration
}

// DevAuth reports whether tokens are signed with a random development
// secret: no JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL.
func (c Config) DevAuth() bool {
	return c.JWTSecret == "" && c.JWTPublicKeyFile == "" && c.JWTJWKSURL == ""
}

// TLS reports whether the server serves TLS itself.
func (c Config) TLS() bool { return c.TLSCertFile != "" }

// Error is an invalid setting or a command-line mistake. It is its own type
// so main can tell a usage problem (exit 2) from a failure to run. It names
// the variable and never holds a secret's value.
type Error struct {
	Var    string // the variable (HTTP_ADDR), the flag (-http-addr) or "command line"
	Value  string // the rejected value; empty for secrets and unknown flags
	Reason string // why, in a few words
}

// Error returns one line, such as
// invalid PRICE_UPDATE_INTERVAL="abc": not a duration, so it reads well
// after a program name on stderr.
func (e *Error) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("invalid %s: %s", e.Var, e.Reason)
	}
	return fmt.Sprintf("invalid %s=%q: %s", e.Var, e.Value, e.Reason)
}

// setting is one variable: its name, default, help, and how to parse and
// check a value into the Config. A secret's value is neither trimmed nor
// shown in errors.
type setting struct {
	env, def, help string
	secret         bool
	set            func(c *Config, v string) error
}

// settings lists every variable in the order -h shows them.

func settings() []setting {
	return append([]setting{
		{"HTTP_ADDR", ":8080", "listen address", false, func(c *Config, v string) error {
			if _, _, err := net.SplitHostPort(v); err != nil {
				return errors.New("not host:port")
			}
			c.HTTPAddr = v
			return nil
		}},
		{"JWT_SECRET", "", "HS256 secret, at least 32 bytes (empty: development mode, random secret and a printed demo token); prefer the variable, flags show in ps", true, func(c *Config, v string) error {
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
		{"INSTRUMENTS_FILE", "", "CSV with header symbol,name,type,base_price,volume,market_cap (empty: 20 built-in instruments)", false, file(func(c *Config) *string { return &c.InstrumentsFile })},
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
			// Not slog.Level.UnmarshalText: it also takes "info+2", and its
			// error repeats the value.
			switch strings.ToLower(v) {
			case "debug":
				c.LogLevel = slog.LevelDebug
			case "info":
				c.LogLevel = slog.LevelInfo
			case "warn":
				c.LogLevel = slog.LevelWarn
			case "error":
				c.LogLevel = slog.LevelError
			default:
				return errors.New(`must be "debug", "info", "warn" or "error"`)
			}
			return nil
		}},
		{"LOG_FORMAT", "json", "json or text", false, func(c *Config, v string) error {
			if v != "json" && v != "text" {
				return errors.New(`must be "json" or "text"`)
			}
			c.LogFormat = v
			return nil
		}},
		{"JWT_PUBLIC_KEY_FILE", "", "PEM public key (RSA, ECDSA P-256/P-384, Ed25519) verifying RS256/384/512, ES256/384 or EdDSA tokens", false, file(func(c *Config) *string { return &c.JWTPublicKeyFile })},
		{"JWT_JWKS_URL", "", "URL of a JSON Web Key Set; keys are cached and refetched for an unknown kid (its value is never shown: it may hold credentials)", true, func(c *Config, v string) error {
			if v != "" {
				u, err := url.Parse(v)
				if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
					return errors.New("must be an http:// or https:// URL")
				}
			}
			c.JWTJWKSURL = v
			return nil
		}},
		{"JWT_ISSUER", "", "required iss claim (empty: not checked)", false, func(c *Config, v string) error { c.JWTIssuer = v; return nil }},
		{"JWT_AUDIENCE", "", "required aud claim (empty: not checked)", false, func(c *Config, v string) error { c.JWTAudience = v; return nil }},
		{"JWT_LEEWAY", "30s", "clock skew tolerated on exp, nbf and iat, 0 to 10m", false, duration(0, 10*time.Minute, func(c *Config) *time.Duration { return &c.JWTLeeway })},
		{"ALLOWED_ORIGINS", "", "comma-separated Origins (scheme://host[:port]) allowed to open WebSockets from a browser; * allows any (empty: the server's own host only)", false, func(c *Config, v string) error {
			origins, err := parseOrigins(v)
			c.AllowedOrigins = origins
			return err
		}},
		{"TRUSTED_PROXIES", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For gives the client IP (empty: none)", false, func(c *Config, v string) error {
			var err error
			c.TrustedProxies, err = parsePrefixes(v)
			return err
		}},
		{"USER_MAX_CONNECTIONS", "10", "open connections per token subject on this instance; beyond it 429", false, integer(1, 1_000_000, func(c *Config) *int { return &c.UserMaxConnections })},
		{"WS_HANDSHAKE_RATE_PER_IP", "20", "WebSocket handshakes per second per client IP, burst twice that; beyond it 429 (0: off)", false, rate(func(c *Config) *float64 { return &c.WSHandshakeRatePerIP })},
		{"WS_MESSAGE_RATE", "10", "client messages per second per connection, burst twice that; beyond it error rate_limited, then close 4029", false, rate(func(c *Config) *float64 { return &c.WSMessageRate })},
		{"TLS_CERT_FILE", "", "PEM certificate chain: with TLS_KEY_FILE the server serves https:// and wss://", false, file(func(c *Config) *string { return &c.TLSCertFile })},
		{"TLS_KEY_FILE", "", "PEM private key of TLS_CERT_FILE", false, file(func(c *Config) *string { return &c.TLSKeyFile })},
		{"HTTP_READ_HEADER_TIMEOUT", "5s", "time a client has to send its request headers (slowloris), 100ms to 1m", false, duration(100*time.Millisecond, time.Minute, func(c *Config) *time.Duration { return &c.HTTPReadHeaderTimeout })},
	}, redisSettings()...)
}

// redisSettings are the variables of BROKER=redis.
func redisSettings() []setting {
	return []setting{
		{"BROKER", "memory", "memory: one instance; redis: several instances share one market through Redis", false, func(c *Config, v string) error {
			if v != "memory" && v != "redis" {
				return errors.New(`must be "memory" or "redis"`)
			}
			c.Broker = v
			return nil
		}},
		{"REDIS_URL", "redis://127.0.0.1:6379", "Redis of BROKER=redis: redis:// or rediss://, with user and password if any", true, func(c *Config, v string) error {
			u, err := url.Parse(strings.TrimSpace(v))
			switch {
			case err != nil:
				return errors.New("not a URL")
			case u.Scheme != "redis" && u.Scheme != "rediss":
				return errors.New("must start with redis:// or rediss://")
			case u.Host == "":
				return errors.New("has no host")
			}
			c.RedisURL = strings.TrimSpace(v)
			return nil
		}},
		{"REDIS_PREFIX", "tickstream:", "prefix of every Redis key and channel, so deployments can share a Redis", false, func(c *Config, v string) error {
			if v == "" || strings.ContainsAny(v, "{} \t\n") {
				return errors.New("must be non-empty, without braces or spaces")
			}
			c.RedisPrefix = v
			return nil
		}},
		{"REDIS_CLUSTER", "false", "true: REDIS_URL is a Redis Cluster, quotes travel by sharded Pub/Sub", false, boolean(func(c *Config) *bool { return &c.RedisCluster })},
		{"FEED_LEASE_TTL", "3s", "lease of the instance that publishes prices; a dead publisher is replaced within about this long, 300ms to 1m", false, duration(300*time.Millisecond, time.Minute, func(c *Config) *time.Duration { return &c.FeedLeaseTTL })},
	}
}

// boolean parses true/false (also on/off, 1/0), in any case, into the field.
func boolean(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		switch strings.ToLower(v) {
		case "true", "on", "1":
			*field(c) = true
		case "false", "off", "0":
			*field(c) = false
		default:
			return errors.New(`must be "true" or "false"`)
		}
		return nil
	}
}

// file takes a path that must name an existing regular file, or empty.
func file(field func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error {
		if v != "" {
			fi, err := os.Stat(v)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				return errors.New("no such file")
			case err != nil:
				return errors.New("cannot stat the file")
			case fi.IsDir():
				return errors.New("is a directory")
			}
		}
		*field(c) = v
		return nil
	}
}

// rate parses a rate per second from 0 to 1,000,000 into the field.
func rate(field func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f >= 0 && f <= 1_000_000) {
			return errors.New("must be a number from 0 to 1000000")
		}
		*field(c) = f
		return nil
	}
}

// parseOrigins checks a comma-separated list of scheme://host[:port]
// origins and lower-cases them, as browsers send them.
func parseOrigins(v string) ([]string, error) {
	var out []string
	for o := range strings.SplitSeq(v, ",") {
		o = strings.ToLower(strings.TrimSpace(o))
		if o == "" {
			continue
		}
		if o != "*" {
			u, err := url.Parse(o)
			if err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
				return nil, fmt.Errorf("%q is not an origin such as https://app.example.com", o)
			}
		}
		out = append(out, o)
	}
	return out, nil
}

// parsePrefixes reads comma-separated CIDRs; a bare address is one host.
func parsePrefixes(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for p := range strings.SplitSeq(v, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !strings.Contains(p, "/") {
			a, err := netip.ParseAddr(p)
			if err != nil {
				return nil, fmt.Errorf("%q is not an IP address or CIDR", p)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		pf, err := netip.ParsePrefix(p)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address or CIDR", p)
		}
		out = append(out, pf.Masked())
	}
	return out, nil
}

// check validates settings that depend on each other, after every variable
// has been read.
func (c Config) check() error {
	keys := 0
	for _, k := range []string{c.JWTSecret, c.JWTPublicKeyFile, c.JWTJWKSURL} {
		if k != "" {
			keys++
		}
	}
	switch {
	case keys > 1:
		return &Error{Var: "JWT_SECRET, JWT_PUBLIC_KEY_FILE and JWT_JWKS_URL", Reason: "set at most one key source"}
	case (c.TLSCertFile == "") != (c.TLSKeyFile == ""):
		return &Error{Var: "TLS_CERT_FILE and TLS_KEY_FILE", Reason: "set both or neither"}
	}
	return nil
}

// duration parses a time.Duration of at least min and, when max > 0, at
// most max into the field.
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

// onOff parses "on" or "off", in any case, into the field.
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

// integer parses an int from min to max into the field.
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

// Load reads the configuration: a flag in args (without the program name,
// os.Args[1:]) wins over the environment variable, read through getenv,
// which wins over the default. An empty variable counts as unset. Every
// value is checked here, once. -h or -help writes the usage to usageOut
// and returns flag.ErrHelp; any other problem, including an unknown flag,
// returns an *Error.
func Load(args []string, getenv func(string) string, usageOut io.Writer) (Config, error) {
	all := settings()
	flags := flag.NewFlagSet("tickstream", flag.ContinueOnError)
	flags.SetOutput(io.Discard) // errors go into the returned *Error, usage to usageOut
	fromFlag := make(map[string]*string, len(all))
	for _, s := range all {
		// Defaults stay out of the FlagSet: whether a flag was given, not
		// its value, decides precedence, and writeUsage prints them.
		fromFlag[s.env] = flags.String(flagName(s.env), "", "")
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			if usageOut != nil {
				writeUsage(usageOut, all)
			}
			return Config{}, fmt.Errorf("tickstream usage: %w", err)
		}
		return Config{}, flagError(err)
	}
	if flags.NArg() > 0 {
		return Config{}, &Error{Var: "command line", Reason: fmt.Sprintf("unexpected argument %q (see -h)", flags.Arg(0))}
	}
	given := map[string]bool{}
	flags.Visit(func(f *flag.Flag) { given[f.Name] = true })

	var c Config
	for _, s := range all {
		v, src := s.def, s.env
		if given[flagName(s.env)] {
			v, src = *fromFlag[s.env], "-"+flagName(s.env)
		} else if e := getenv(s.env); e != "" {
			v = e
		}
		if s.secret {
			if err := s.set(&c, v); err != nil {
				return Config{}, &Error{Var: src, Reason: err.Error()}
			}
			continue
		}
		if err := s.set(&c, strings.TrimSpace(v)); err != nil {
			return Config{}, &Error{Var: src, Value: v, Reason: err.Error()}
		}
	}
	if err := c.check(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// flagError turns the flag package's parse error, such as "flag provided
// but not defined: -x", into an *Error naming the flag. All flags are
// strings, so the flag package rejects only names and missing values.
func flagError(err error) *Error {
	reason, name, ok := strings.Cut(err.Error(), ": -")
	if !ok {
		return &Error{Var: "command line", Reason: err.Error() + " (see -h)"}
	}
	return &Error{Var: "-" + name, Reason: reason + " (see -h)"}
}

// writeUsage lists every flag with its variable, default and meaning.
func writeUsage(w io.Writer, all []setting) {
	fmt.Fprintf(w, "Usage: tickstream [flags]\n\nEvery setting is an environment variable and a flag; a flag wins over the variable, which wins over the default.\n\n")
	for _, s := range all {
		def := s.def
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(w, "  -%s  (%s, default %s)\n    \t%s\n", flagName(s.env), s.env, def, s.help)
	}
}
