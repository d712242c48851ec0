package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tickstream/tickstream/internal/auth"
	"github.com/tickstream/tickstream/internal/broker"
	"github.com/tickstream/tickstream/internal/config"
	"github.com/tickstream/tickstream/internal/feed"
	"github.com/tickstream/tickstream/internal/hub"
	"github.com/tickstream/tickstream/internal/metrics"
	"github.com/tickstream/tickstream/internal/quote"
	"github.com/tickstream/tickstream/internal/server"
	"github.com/tickstream/tickstream/internal/ws"
)

// demoTokenTTL is how long the development token printed at start-up lasts.
const demoTokenTTL = 24 * time.Hour

// run builds every component in order, serves until ctx ends, and shuts down
// in reverse. args include the program name. stdout receives the
// development banner; stderr the logs.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Load(args[1:], getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)

	instruments, err := loadInstruments(cfg)
	if err != nil {
		return err
	}
	store, err := quote.NewStore(instruments, time.Now())
	if err != nil {
		return fmt.Errorf("instruments: %w", err)
	}
	h := hub.New(store)
	brk, err := buildBroker(ctx, cfg, h, log)
	if err != nil {
		return err
	}

	verifier, err := newVerifier(ctx, cfg, log)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var wss *ws.Server // read by a gauge only after it is set below
	m := metrics.New(reg, metrics.Gauges{
		Subscriptions:   func() float64 { return float64(h.Subscriptions()) },
		ActiveSymbols:   func() float64 { return float64(len(h.Active(nil))) },
		IdleConnections: func() float64 { return float64(wss.Idle()) },
	})
	broker.RegisterMetrics(reg, brk)

	wss = ws.NewServer(ws.Config{
		MaxConnections:     cfg.WSMaxConnections,
		MaxSymbols:         cfg.WSMaxSymbols,
		IdleTimeout:        cfg.WSIdleTimeout,
		PingInterval:       cfg.WSHealthCheckInterval,
		WriteTimeout:       cfg.WSWriteTimeout,
		SlowConsumerStalls: cfg.WSCircuitBreaker,
		Compression:        cfg.WSCompression,
		ReaderGoroutines:   !cfg.WSEventLoop,
		MaxPerUser:         cfg.UserMaxConnections,
		MessageRate:        cfg.WSMessageRate,
		Leeway:             cfg.JWTLeeway,
	}, h, verifier, log, m)
	api, err := server.New(server.Config{
		MaxSymbols:     cfg.WSMaxSymbols,
		AllowedOrigins: cfg.AllowedOrigins,
		TrustedProxies: cfg.TrustedProxies,
		HandshakeRate:  cfg.WSHandshakeRatePerIP,
		Degraded:       broker.Degraded(brk),
		BeforeRead:     brk.Prepare,
	}, log, store, wss, verifier, m, reg)
	if err != nil {
		return err
	}
	tlsConfig, err := loadTLS(cfg)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	httpSrv := &http.Server{
		Handler:           api.Handler(),
		ReadHeaderTimeout: cfg.HTTPReadHeaderTimeout,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    server.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	sim := feed.NewSimulator(feed.SimulatorConfig{
		Interval:    cfg.PriceUpdateInterval,
		Oscillation: cfg.PriceOscillationPercent,
		Mode:        feed.Mode(cfg.SimUpdate),
	}, brk, log, func(moved int) {
		if moved > 0 {
			m.Ticks.Inc()
			m.SymbolsMoved.Add(float64(moved))
		}
	})

	feedCtx, stopFeed := context.WithCancel(context.Background())
	defer stopFeed()
	feedDone := make(chan struct{})
	brokerDone := make(chan error, 1)
	go func() { sim.Run(feedCtx); close(feedDone) }()
	go func() { brokerDone <- brk.Run(feedCtx) }()

	if cfg.DebugAddr != "" {
		if err := serveDebug(ctx, cfg.DebugAddr, log); err != nil {
			return err
		}
	}

	serveErr := make(chan error, 1)
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	go func() { serveErr <- httpSrv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "tls", tlsConfig != nil, "instruments", len(instruments), "dev_auth", cfg.DevAuth(), "broker", cfg.Broker)
	if cfg.DevAuth() {
		if err := printDemo(stdout, verifier, ln.Addr(), tlsConfig != nil); err != nil {
			return err
		}
	}

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}

	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	// Refuse new handshakes first (readyz turns 503), then close the
	// listener, then send every client 1001, then stop the feed.
	wsErr := wss.Shutdown(shutCtx)
	httpErr := httpSrv.Shutdown(shutCtx)
	stopFeed()
	<-feedDone
	brokerErr := <-brokerDone
	if err := errors.Join(wsErr, httpErr, brokerErr); err != nil {
		log.Warn("shutdown incomplete", "err", err)
	}
	log.Info("stopped")
	return nil
}

// buildBroker makes the broker BROKER names and registers it on h. With
// Redis it waits up to two seconds for Redis, so that an instance started
// next to a running market serves that market to its first client; when
// Redis does not answer, the instance starts degraded and keeps trying.
func buildBroker(ctx context.Context, cfg config.Config, h *hub.Hub, log *slog.Logger) (broker.Broker, error) {
	if cfg.Broker != "redis" {
		return broker.NewMemory(h), nil
	}
	r, err := broker.NewRedis(broker.RedisConfig{
		URL: cfg.RedisURL, Prefix: cfg.RedisPrefix, Cluster: cfg.RedisCluster, LeaseTTL: cfg.FeedLeaseTTL,
	}, h, log)
	if err != nil {
		return nil, err
	}
	h.BeforeSubscribe(r.Prepare)
	if err := r.Connect(ctx, 2*time.Second); err != nil {
		log.Warn("redis unreachable at start: serving local prices until it answers", "err", err)
	}
	return r, nil
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func loadInstruments(cfg config.Config) ([]quote.Instrument, error) {
	list := quote.Builtin()
	if cfg.InstrumentsFile != "" {
		f, err := os.Open(cfg.InstrumentsFile)
		if err != nil {
			return nil, fmt.Errorf("INSTRUMENTS_FILE: %w", err)
		}
		defer f.Close()
		if list, err = quote.ReadCSV(f); err != nil {
			return nil, fmt.Errorf("INSTRUMENTS_FILE %s: %w", cfg.InstrumentsFile, err)
		}
	}
	return append(list, quote.Synthetic(cfg.SyntheticSymbols)...), nil
}

// newVerifier builds the token verifier from the configured key source:
// JWT_SECRET, JWT_PUBLIC_KEY_FILE, JWT_JWKS_URL, or in development mode a
// random secret. ctx bounds the JWKS refresher.
func newVerifier(ctx context.Context, cfg config.Config, log *slog.Logger) (*auth.Verifier, error) {
	o := auth.Options{Secret: []byte(cfg.JWTSecret), JWKSURL: cfg.JWTJWKSURL,
		Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, Leeway: cfg.JWTLeeway, Logger: log}
	if cfg.JWTPublicKeyFile != "" {
		pem, err := os.ReadFile(cfg.JWTPublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("JWT_PUBLIC_KEY_FILE: %w", err)
		}
		o.PublicKeyPEM = pem
	}
	if cfg.DevAuth() {
		secret, err := auth.RandomSecret()
		if err != nil {
			return nil, err
		}
		o.Secret = secret
	}
	v, err := auth.New(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("token verification: %w", err)
	}
	return v, nil
}

// loadTLS reads TLS_CERT_FILE and TLS_KEY_FILE; nil without them.
func loadTLS(cfg config.Config) (*tls.Config, error) {
	if !cfg.TLS() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_CERT_FILE and TLS_KEY_FILE: %w", err)
	}
	// HTTP/1.1 only: WebSocket upgrades need it (RFC 8441 is not served).
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}, nil
}

// printDemo writes the development token and how to use it. It goes to
// stdout, never to the logs.
func printDemo(w io.Writer, v *auth.Verifier, addr net.Addr, secure bool) error {
	token, err := v.Mint("demo", demoTokenTTL)
	if err != nil {
		return fmt.Errorf("mint demo token: %w", err)
	}
	host := "localhost"
	if tcp, ok := addr.(*net.TCPAddr); ok && !tcp.IP.IsUnspecified() {
		host = tcp.IP.String()
	}
	port := addr.(*net.TCPAddr).Port
	base := net.JoinHostPort(host, fmt.Sprint(port))
	wsScheme, httpScheme := "ws", "http"
	if secure {
		wsScheme, httpScheme = "wss", "https"
	}
	_, err = fmt.Fprintf(w, `
tickstream development mode: JWT_SECRET is not set, so tokens are signed
with a random secret that lives as long as this process.

Demo token (sub "demo", valid %s):
  %s

WebSocket:
  %s://%s/ws/quotes?symbols=AAPL,GOOGL&token=%s

REST:
  curl -H 'Authorization: Bearer %s' '%s://%s/v1/quotes?symbols=AAPL,GOOGL'

`, demoTokenTTL, token, wsScheme, base, token, token, httpScheme, base)
	return err
}

// serveDebug serves net/http/pprof on its own listener until ctx ends.
func serveDebug(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on DEBUG_ADDR %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	go func() { <-ctx.Done(); srv.Close() }()
	log.Warn("profiler listening", "addr", ln.Addr().String())
	return nil
}
