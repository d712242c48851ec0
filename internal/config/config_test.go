package config_test

import (
	"bytes"
	"errors"
	"flag"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/internal/config"
)

// allVars is every variable the server reads, in the order -h lists them.
var allVars = []struct{ env, flag, def string }{
	{"HTTP_ADDR", "-http-addr", ":8080"},
	{"JWT_SECRET", "-jwt-secret", `""`},
	{"PRICE_UPDATE_INTERVAL", "-price-update-interval", "4s"},
	{"PRICE_OSCILLATION_PERCENT", "-price-oscillation-percent", "0.01"},
	{"SIM_UPDATE", "-sim-update", "subset"},
	{"INSTRUMENTS_FILE", "-instruments-file", `""`},
	{"SYNTHETIC_SYMBOLS", "-synthetic-symbols", "0"},
	{"WS_MAX_CONNECTIONS", "-ws-max-connections", "10000"},
	{"WS_MAX_SYMBOLS", "-ws-max-symbols", "100"},
	{"WS_IDLE_TIMEOUT", "-ws-idle-timeout", "30m"},
	{"WS_HEALTH_CHECK_INTERVAL", "-ws-health-check-interval", "30s"},
	{"WS_WRITE_TIMEOUT", "-ws-write-timeout", "2s"},
	{"WS_CIRCUIT_BREAKER_THRESHOLD", "-ws-circuit-breaker-threshold", "5"},
	{"WS_COMPRESSION", "-ws-compression", "on"},
	{"WS_EVENT_LOOP", "-ws-event-loop", "on"},
	{"SHUTDOWN_TIMEOUT", "-shutdown-timeout", "10s"},
	{"DEBUG_ADDR", "-debug-addr", `""`},
	{"LOG_LEVEL", "-log-level", "info"},
	{"LOG_FORMAT", "-log-format", "json"},
	{"JWT_PUBLIC_KEY_FILE", "-jwt-public-key-file", `""`},
	{"JWT_JWKS_URL", "-jwt-jwks-url", `""`},
	{"JWT_ISSUER", "-jwt-issuer", `""`},
	{"JWT_AUDIENCE", "-jwt-audience", `""`},
	{"JWT_LEEWAY", "-jwt-leeway", "30s"},
	{"ALLOWED_ORIGINS", "-allowed-origins", `""`},
	{"TRUSTED_PROXIES", "-trusted-proxies", `""`},
	{"USER_MAX_CONNECTIONS", "-user-max-connections", "10"},
	{"WS_HANDSHAKE_RATE_PER_IP", "-ws-handshake-rate-per-ip", "20"},
	{"WS_MESSAGE_RATE", "-ws-message-rate", "10"},
	{"TLS_CERT_FILE", "-tls-cert-file", `""`},
	{"TLS_KEY_FILE", "-tls-key-file", `""`},
	{"HTTP_READ_HEADER_TIMEOUT", "-http-read-header-timeout", "5s"},
}

const goodSecret = "0123456789abcdef0123456789abcdef" // 32 bytes

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func defaults() config.Config {
	return config.Config{
		HTTPAddr:                ":8080",
		PriceUpdateInterval:     4 * time.Second,
		PriceOscillationPercent: 0.01,
		SimUpdate:               "subset",
		WSMaxConnections:        10000,
		WSMaxSymbols:            100,
		WSIdleTimeout:           30 * time.Minute,
		WSHealthCheckInterval:   30 * time.Second,
		WSWriteTimeout:          2 * time.Second,
		WSCircuitBreaker:        5,
		WSCompression:           true,
		WSEventLoop:             true,
		ShutdownTimeout:         10 * time.Second,
		LogLevel:                slog.LevelInfo,
		LogFormat:               "json",
		JWTLeeway:               30 * time.Second,
		UserMaxConnections:      10,
		WSHandshakeRatePerIP:    20,
		WSMessageRate:           10,
		HTTPReadHeaderTimeout:   5 * time.Second,
		Broker:                  "memory",
		RedisURL:                "redis://127.0.0.1:6379",
		RedisPrefix:             "tickstream:",
		FeedLeaseTTL:            3 * time.Second,
	}
}

func TestLoad(t *testing.T) {
	instruments := filepath.Join(t.TempDir(), "instruments.csv")
	if err := os.WriteFile(instruments, []byte("symbol,name,type,base_price,volume,market_cap\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want func(*config.Config) // edits the defaults into the expected Config
	}{
		{"defaults", nil, nil, func(*config.Config) {}},
		{"empty variables count as unset", nil, map[string]string{"HTTP_ADDR": "", "LOG_LEVEL": ""}, func(*config.Config) {}},
		{
			"environment",
			nil,
			map[string]string{
				"HTTP_ADDR": "127.0.0.1:9000", "JWT_SECRET": goodSecret, "PRICE_UPDATE_INTERVAL": "10ms",
				"PRICE_OSCILLATION_PERCENT": "0.5", "SIM_UPDATE": "all", "INSTRUMENTS_FILE": instruments,
				"SYNTHETIC_SYMBOLS": "100000", "WS_MAX_CONNECTIONS": "1", "WS_MAX_SYMBOLS": "10000",
				"WS_IDLE_TIMEOUT": "1s", "WS_HEALTH_CHECK_INTERVAL": "100ms", "SHUTDOWN_TIMEOUT": "0s",
				"WS_COMPRESSION": "OFF", "WS_EVENT_LOOP": "off", "DEBUG_ADDR": "127.0.0.1:6060",
				"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "text",
			},
			func(c *config.Config) {
				c.HTTPAddr, c.JWTSecret, c.PriceUpdateInterval = "127.0.0.1:9000", goodSecret, 10*time.Millisecond
				c.PriceOscillationPercent, c.SimUpdate, c.InstrumentsFile = 0.5, "all", instruments
				c.SyntheticSymbols, c.WSMaxConnections, c.WSMaxSymbols = 100000, 1, 10000
				c.WSIdleTimeout, c.WSHealthCheckInterval, c.ShutdownTimeout = time.Second, 100*time.Millisecond, 0
				c.WSCompression, c.WSEventLoop, c.DebugAddr = false, false, "127.0.0.1:6060"
				c.LogLevel, c.LogFormat = slog.LevelDebug, "text"
			},
		},
		{"upper bounds", nil, map[string]string{"PRICE_UPDATE_INTERVAL": "1h", "WS_MAX_CONNECTIONS": "1000000"}, func(c *config.Config) {
			c.PriceUpdateInterval, c.WSMaxConnections = time.Hour, 1000000
		}},
		{"surrounding spaces are trimmed", nil, map[string]string{"WS_MAX_SYMBOLS": " 7 ", "LOG_LEVEL": "warn\n"}, func(c *config.Config) {
			c.WSMaxSymbols, c.LogLevel = 7, slog.LevelWarn
		}},
		{"redis", nil, map[string]string{"BROKER": "redis", "REDIS_URL": "rediss://u:pw@redis.example:6380/2", "REDIS_PREFIX": "prod:", "REDIS_CLUSTER": "true", "FEED_LEASE_TTL": "5s"}, func(c *config.Config) {
			c.Broker, c.RedisURL, c.RedisPrefix, c.RedisCluster, c.FeedLeaseTTL = "redis", "rediss://u:pw@redis.example:6380/2", "prod:", true, 5*time.Second
		}},
		{"secret kept byte for byte", nil, map[string]string{"JWT_SECRET": " " + goodSecret}, func(c *config.Config) {
			c.JWTSecret = " " + goodSecret
		}},
		{
			"flags override the environment",
			[]string{"-ws-max-symbols", "7", "-price-update-interval=100ms", "--log-level", "error"},
			map[string]string{"WS_MAX_SYMBOLS": "5", "PRICE_UPDATE_INTERVAL": "1s", "LOG_LEVEL": "debug", "SIM_UPDATE": "all"},
			func(c *config.Config) {
				c.WSMaxSymbols, c.PriceUpdateInterval, c.LogLevel, c.SimUpdate = 7, 100*time.Millisecond, slog.LevelError, "all"
			},
		},
		{"an empty flag overrides the environment", []string{"-instruments-file="}, map[string]string{"INSTRUMENTS_FILE": "/no/such/file"}, func(*config.Config) {}},
		{"flag alone", []string{"-http-addr", "[::1]:0"}, nil, func(c *config.Config) { c.HTTPAddr = "[::1]:0" }},
		{
			"security settings",
			nil,
			map[string]string{
				"JWT_PUBLIC_KEY_FILE": instruments, "JWT_ISSUER": "https://id.example.com/", "JWT_AUDIENCE": "tickstream",
				"JWT_LEEWAY": "0s", "ALLOWED_ORIGINS": " https://App.example.com , http://localhost:3000,",
				"TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1", "USER_MAX_CONNECTIONS": "3",
				"WS_HANDSHAKE_RATE_PER_IP": "0", "WS_MESSAGE_RATE": "2.5",
				"TLS_CERT_FILE": instruments, "TLS_KEY_FILE": instruments,
			},
			func(c *config.Config) {
				c.JWTPublicKeyFile, c.JWTIssuer, c.JWTAudience, c.JWTLeeway = instruments, "https://id.example.com/", "tickstream", 0
				c.AllowedOrigins = []string{"https://app.example.com", "http://localhost:3000"}
				c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128")}
				c.UserMaxConnections, c.WSHandshakeRatePerIP, c.WSMessageRate = 3, 0, 2.5
				c.TLSCertFile, c.TLSKeyFile = instruments, instruments
			},
		},
		{"JWKS URL and any origin", nil, map[string]string{"JWT_JWKS_URL": "https://id.example.com/.well-known/jwks.json", "ALLOWED_ORIGINS": "*"}, func(c *config.Config) {
			c.JWTJWKSURL, c.AllowedOrigins = "https://id.example.com/.well-known/jwks.json", []string{"*"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.Load(tt.args, env(tt.env), nil)
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			want := defaults()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestDevAuth(t *testing.T) {
	tests := []struct {
		secret string
		want   bool
	}{
		{"", true},
		{goodSecret, false},
	}
	for _, tt := range tests {
		t.Run("JWT_SECRET="+tt.secret, func(t *testing.T) {
			c, err := config.Load(nil, env(map[string]string{"JWT_SECRET": tt.secret}), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.DevAuth(); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestInvalid(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantVar string
	}{
		{"address without port", nil, map[string]string{"HTTP_ADDR": "8080"}, "HTTP_ADDR"},
		{"empty address flag", []string{"-http-addr="}, nil, "-http-addr"},
		{"short secret", nil, map[string]string{"JWT_SECRET": "too-short-secret"}, "JWT_SECRET"},
		{"31-byte secret", nil, map[string]string{"JWT_SECRET": goodSecret[1:]}, "JWT_SECRET"},
		{"interval not a duration", nil, map[string]string{"PRICE_UPDATE_INTERVAL": "abc"}, "PRICE_UPDATE_INTERVAL"},
		{"interval too short", nil, map[string]string{"PRICE_UPDATE_INTERVAL": "9ms"}, "PRICE_UPDATE_INTERVAL"},
		{"interval too long", nil, map[string]string{"PRICE_UPDATE_INTERVAL": "61m"}, "PRICE_UPDATE_INTERVAL"},
		{"oscillation zero", nil, map[string]string{"PRICE_OSCILLATION_PERCENT": "0"}, "PRICE_OSCILLATION_PERCENT"},
		{"oscillation one", nil, map[string]string{"PRICE_OSCILLATION_PERCENT": "1"}, "PRICE_OSCILLATION_PERCENT"},
		{"oscillation as percent", nil, map[string]string{"PRICE_OSCILLATION_PERCENT": "1.5"}, "PRICE_OSCILLATION_PERCENT"},
		{"oscillation NaN", nil, map[string]string{"PRICE_OSCILLATION_PERCENT": "NaN"}, "PRICE_OSCILLATION_PERCENT"},
		{"oscillation not a number", nil, map[string]string{"PRICE_OSCILLATION_PERCENT": "1%"}, "PRICE_OSCILLATION_PERCENT"},
		{"sim update", nil, map[string]string{"SIM_UPDATE": "most"}, "SIM_UPDATE"},
		{"instruments file missing", nil, map[string]string{"INSTRUMENTS_FILE": "/no/such/file.csv"}, "INSTRUMENTS_FILE"},
		{"instruments file a directory", nil, map[string]string{"INSTRUMENTS_FILE": dir}, "INSTRUMENTS_FILE"},
		{"synthetic negative", nil, map[string]string{"SYNTHETIC_SYMBOLS": "-3"}, "SYNTHETIC_SYMBOLS"},
		{"synthetic too many", nil, map[string]string{"SYNTHETIC_SYMBOLS": "100001"}, "SYNTHETIC_SYMBOLS"},
		{"max connections zero", nil, map[string]string{"WS_MAX_CONNECTIONS": "0"}, "WS_MAX_CONNECTIONS"},
		{"max connections too many", nil, map[string]string{"WS_MAX_CONNECTIONS": "1000001"}, "WS_MAX_CONNECTIONS"},
		{"max symbols not a number", nil, map[string]string{"WS_MAX_SYMBOLS": "many"}, "WS_MAX_SYMBOLS"},
		{"max symbols too many", nil, map[string]string{"WS_MAX_SYMBOLS": "10001"}, "WS_MAX_SYMBOLS"},
		{"idle timeout too short", nil, map[string]string{"WS_IDLE_TIMEOUT": "999ms"}, "WS_IDLE_TIMEOUT"},
		{"health check too short", nil, map[string]string{"WS_HEALTH_CHECK_INTERVAL": "99ms"}, "WS_HEALTH_CHECK_INTERVAL"},
		{"write timeout too short", nil, map[string]string{"WS_WRITE_TIMEOUT": "1ms"}, "WS_WRITE_TIMEOUT"},
		{"circuit breaker zero", nil, map[string]string{"WS_CIRCUIT_BREAKER_THRESHOLD": "0"}, "WS_CIRCUIT_BREAKER_THRESHOLD"},
		{"compression", nil, map[string]string{"WS_COMPRESSION": "maybe"}, "WS_COMPRESSION"},
		{"event loop", nil, map[string]string{"WS_EVENT_LOOP": "1"}, "WS_EVENT_LOOP"},
		{"shutdown negative", nil, map[string]string{"SHUTDOWN_TIMEOUT": "-1s"}, "SHUTDOWN_TIMEOUT"},
		{"debug address", nil, map[string]string{"DEBUG_ADDR": "localhost"}, "DEBUG_ADDR"},
		{"log level", nil, map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{"log level offset", nil, map[string]string{"LOG_LEVEL": "info+2"}, "LOG_LEVEL"},
		{"log format", nil, map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{"bad flag value names the flag", []string{"-ws-max-symbols", "x"}, map[string]string{"WS_MAX_SYMBOLS": "5"}, "-ws-max-symbols"},
		{"bad variable under a good flag is ignored, the next bad one reported", []string{"-log-level=warn"}, map[string]string{"LOG_LEVEL": "loud", "LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{"unknown flag", []string{"-no-such-flag"}, nil, "-no-such-flag"},
		{"unknown flag with value", []string{"--no-such-flag=1"}, nil, "-no-such-flag"},
		{"flag without its value", []string{"-http-addr"}, nil, "-http-addr"},
		{"bad flag syntax", []string{"---x"}, nil, "---x"},
		{"positional argument", []string{"serve"}, nil, "command line"},
		{"public key file missing", nil, map[string]string{"JWT_PUBLIC_KEY_FILE": "/no/such/key.pem"}, "JWT_PUBLIC_KEY_FILE"},
		{"JWKS URL without scheme", nil, map[string]string{"JWT_JWKS_URL": "id.example.com/jwks.json"}, "JWT_JWKS_URL"},
		{"JWKS URL of another scheme", nil, map[string]string{"JWT_JWKS_URL": "file:///etc/jwks.json"}, "JWT_JWKS_URL"},
		{"two key sources", nil, map[string]string{"JWT_SECRET": goodSecret, "JWT_JWKS_URL": "https://id.example.com/jwks"}, "JWT_SECRET, JWT_PUBLIC_KEY_FILE and JWT_JWKS_URL"},
		{"leeway negative", nil, map[string]string{"JWT_LEEWAY": "-1s"}, "JWT_LEEWAY"},
		{"leeway too long", nil, map[string]string{"JWT_LEEWAY": "11m"}, "JWT_LEEWAY"},
		{"origin without scheme", nil, map[string]string{"ALLOWED_ORIGINS": "app.example.com"}, "ALLOWED_ORIGINS"},
		{"origin with a path", nil, map[string]string{"ALLOWED_ORIGINS": "https://app.example.com/page"}, "ALLOWED_ORIGINS"},
		{"proxy not an address", nil, map[string]string{"TRUSTED_PROXIES": "proxy.local"}, "TRUSTED_PROXIES"},
		{"proxy bad CIDR", nil, map[string]string{"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES"},
		{"user connections zero", nil, map[string]string{"USER_MAX_CONNECTIONS": "0"}, "USER_MAX_CONNECTIONS"},
		{"handshake rate negative", nil, map[string]string{"WS_HANDSHAKE_RATE_PER_IP": "-1"}, "WS_HANDSHAKE_RATE_PER_IP"},
		{"message rate NaN", nil, map[string]string{"WS_MESSAGE_RATE": "NaN"}, "WS_MESSAGE_RATE"},
		{"read header timeout too short", nil, map[string]string{"HTTP_READ_HEADER_TIMEOUT": "10ms"}, "HTTP_READ_HEADER_TIMEOUT"},
		{"TLS cert without key", nil, map[string]string{"TLS_CERT_FILE": "/etc/hostname"}, "TLS_CERT_FILE and TLS_KEY_FILE"},
		{"broker", nil, map[string]string{"BROKER": "kafka"}, "BROKER"},
		{"redis url scheme", nil, map[string]string{"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"},
		{"redis url without host", nil, map[string]string{"REDIS_URL": "redis://"}, "REDIS_URL"},
		{"redis prefix with a hash tag", nil, map[string]string{"REDIS_PREFIX": "a{b}:"}, "REDIS_PREFIX"},
		{"redis cluster", nil, map[string]string{"REDIS_CLUSTER": "yes"}, "REDIS_CLUSTER"},
		{"lease too short", nil, map[string]string{"FEED_LEASE_TTL": "100ms"}, "FEED_LEASE_TTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(tt.args, env(tt.env), nil)
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v (%T), want a *config.Error", err, err)
			}
			if ce.Var != tt.wantVar {
				t.Errorf("Var: got %q, want %q (error %q)", ce.Var, tt.wantVar, err)
			}
			if !strings.HasPrefix(err.Error(), "invalid "+tt.wantVar) {
				t.Errorf("got %q, want it to start with %q", err, "invalid "+tt.wantVar)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("got %q, want one line", err)
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"value quoted", nil, map[string]string{"PRICE_UPDATE_INTERVAL": "abc"}, `invalid PRICE_UPDATE_INTERVAL="abc": not a duration`},
		{"flag named", []string{"-sim-update", "most"}, nil, `invalid -sim-update="most": must be "subset" or "all"`},
		{"secret not shown", nil, map[string]string{"JWT_SECRET": "short"}, `invalid JWT_SECRET: must be at least 32 bytes`},
		{"redis password not shown", nil, map[string]string{"REDIS_URL": "http://u:hunter2@h:1"}, `invalid REDIS_URL: must start with redis:// or rediss://`},
		{"unknown flag", []string{"-verbose"}, nil, `invalid -verbose: flag provided but not defined (see -h)`},
		{"newline escaped", nil, map[string]string{"LOG_FORMAT": "json\nx"}, `invalid LOG_FORMAT="json\nx": must be "json" or "text"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(tt.args, env(tt.env), nil)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("got %q, want it to start with %q", err, tt.want)
			}
		})
	}
}

func TestSecretNeverShown(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		secret string
	}{
		{"short secret in the environment", nil, map[string]string{"JWT_SECRET": "hunter2-but-longer"}, "hunter2-but-longer"},
		{"short secret as a flag", []string{"-jwt-secret", "hunter2-but-longer"}, nil, "hunter2-but-longer"},
		{"short secret with spaces", nil, map[string]string{"JWT_SECRET": "  hunter2  "}, "hunter2"},
		{"good secret, another variable bad", nil, map[string]string{"JWT_SECRET": goodSecret, "LOG_FORMAT": "xml"}, goodSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(tt.args, env(tt.env), nil)
			if err == nil {
				t.Fatal("got no error, want one")
			}
			if strings.Contains(err.Error(), tt.secret) {
				t.Errorf("got %q, want an error without the secret", err)
			}
			var ce *config.Error
			if errors.As(err, &ce) && strings.Contains(ce.Value, tt.secret) {
				t.Errorf("Value: got %q, want it without the secret", ce.Value)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help"} {
		t.Run(arg, func(t *testing.T) {
			var usage bytes.Buffer
			_, err := config.Load([]string{arg}, env(nil), &usage)
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("got %v, want flag.ErrHelp", err)
			}
			var ce *config.Error
			if errors.As(err, &ce) {
				t.Errorf("got *config.Error %v, want help not to be a usage mistake", err)
			}
			lines := strings.Split(usage.String(), "\n")
			for _, v := range allVars {
				want := v.flag + "  (" + v.env + ", default " + v.def + ")"
				found := false
				for _, l := range lines {
					found = found || strings.Contains(l, want)
				}
				if !found {
					t.Errorf("usage lacks %q; got:\n%s", want, usage.String())
				}
			}
		})
	}
	if _, err := config.Load([]string{"-h"}, env(nil), nil); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("nil usage writer: got %v, want flag.ErrHelp", err)
	}
}
