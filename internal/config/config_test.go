package config_test

import (
	"bytes"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/internal/config"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := config.Load(nil, env(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := config.Config{
		HTTPAddr: ":8080", PriceUpdateInterval: 4 * time.Second, PriceOscillationPercent: 0.01,
		SimUpdate: "subset", WSMaxConnections: 10000, WSMaxSymbols: 100, WSIdleTimeout: 30 * time.Minute,
		WSHealthCheckInterval: 30 * time.Second, WSWriteTimeout: 2 * time.Second, WSCircuitBreaker: 5, WSCompression: true, WSEventLoop: true, ShutdownTimeout: 10 * time.Second, LogLevel: slog.LevelInfo, LogFormat: "json",
	}
	if c != want {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
	if !c.DevAuth() {
		t.Error("DevAuth: got false with no JWT_SECRET, want true")
	}
}

func TestEnvAndFlags(t *testing.T) {
	e := env(map[string]string{"HTTP_ADDR": "127.0.0.1:9000", "WS_MAX_SYMBOLS": "5", "LOG_LEVEL": "DEBUG", "SIM_UPDATE": "all"})
	c, err := config.Load([]string{"-ws-max-symbols", "7", "-price-update-interval=100ms"}, e, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "127.0.0.1:9000" || c.WSMaxSymbols != 7 || c.PriceUpdateInterval != 100*time.Millisecond ||
		c.LogLevel != slog.LevelDebug || c.SimUpdate != "all" {
		t.Errorf("got %+v", c)
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct {
		env, value string
	}{
		{"HTTP_ADDR", "8080"},
		{"JWT_SECRET", "too-short-secret"},
		{"PRICE_UPDATE_INTERVAL", "fast"},
		{"PRICE_UPDATE_INTERVAL", "1ms"},
		{"PRICE_UPDATE_INTERVAL", "2h"},
		{"PRICE_OSCILLATION_PERCENT", "0"},
		{"PRICE_OSCILLATION_PERCENT", "1.5"},
		{"SIM_UPDATE", "most"},
		{"INSTRUMENTS_FILE", "/no/such/file.csv"},
		{"SYNTHETIC_SYMBOLS", "-3"},
		{"WS_MAX_CONNECTIONS", "0"},
		{"WS_MAX_SYMBOLS", "many"},
		{"WS_IDLE_TIMEOUT", "10ms"},
		{"WS_HEALTH_CHECK_INTERVAL", "1ms"},
		{"WS_WRITE_TIMEOUT", "1ms"},
		{"WS_CIRCUIT_BREAKER_THRESHOLD", "0"},
		{"WS_COMPRESSION", "maybe"},
		{"WS_EVENT_LOOP", "1"},
		{"SHUTDOWN_TIMEOUT", "-1s"},
		{"LOG_LEVEL", "loud"},
		{"LOG_FORMAT", "xml"},
	}
	for _, tt := range tests {
		t.Run(tt.env+"="+tt.value, func(t *testing.T) {
			_, err := config.Load(nil, env(map[string]string{tt.env: tt.value}), nil)
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Var != tt.env {
				t.Fatalf("got %v, want a *config.Error for %s", err, tt.env)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			if tt.env == "JWT_SECRET" && strings.Contains(err.Error(), tt.value) {
				t.Errorf("error shows the secret: %q", err)
			}
		})
	}
}

func TestFlagErrors(t *testing.T) {
	var ce *config.Error
	if _, err := config.Load([]string{"-no-such-flag"}, env(nil), nil); !errors.As(err, &ce) {
		t.Errorf("unknown flag: got %v, want *config.Error", err)
	}
	if _, err := config.Load([]string{"-ws-max-symbols", "x"}, env(nil), nil); !errors.As(err, &ce) || ce.Var != "-ws-max-symbols" {
		t.Errorf("bad flag value: got %v, want *config.Error naming -ws-max-symbols", err)
	}
	var usage bytes.Buffer
	_, err := config.Load([]string{"-h"}, env(nil), &usage)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: got %v, want flag.ErrHelp", err)
	}
	for _, name := range []string{"HTTP_ADDR", "JWT_SECRET", "PRICE_UPDATE_INTERVAL", "SIM_UPDATE", "WS_MAX_CONNECTIONS", "LOG_FORMAT", "-ws-idle-timeout"} {
		if !strings.Contains(usage.String(), name) {
			t.Errorf("usage lacks %s", name)
		}
	}
}
