// Package ws serves the quote stream over WebSocket (RFC 6455): the upgrade,
// one connection's reader and writer, the client protocol (subscribe,
// unsubscribe, ping), heartbeats, and shutdown. Frames are read and written
// on the raw connection with gobwas/ws's low-level API so that an idle
// connection holds no buffer and no writer goroutine.
package ws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/tickstream/tickstream/internal/auth"
	"github.com/tickstream/tickstream/internal/hub"
	"github.com/tickstream/tickstream/internal/metrics"
	"github.com/tickstream/tickstream/internal/quote"
)

// Config holds the connection limits and timers.
type Config struct {
	MaxConnections int           // WS_MAX_CONNECTIONS
	MaxSymbols     int           // WS_MAX_SYMBOLS per connection
	IdleTimeout    time.Duration // WS_IDLE_TIMEOUT: no frame from the client for this long closes it
	PingInterval   time.Duration // WS_HEALTH_CHECK_INTERVAL
	WriteTimeout   time.Duration // WS_WRITE_TIMEOUT: deadline of one write
	// SlowConsumerStalls is WS_CIRCUIT_BREAKER_THRESHOLD: write deadlines
	// in a row without draining after which the connection is closed 4008.
	SlowConsumerStalls int
	CloseGrace         time.Duration // wait for the client's close reply; 0 means 2s
	Compression        bool          // WS_COMPRESSION: accept permessage-deflate offers
	// ReaderGoroutines is WS_EVENT_LOOP=off: a reader goroutine per
	// connection instead of the epoll poller (for comparison, and the
	// fallback where epoll is missing).
	ReaderGoroutines bool
	// MaxPerUser is USER_MAX_CONNECTIONS: open connections of one token
	// subject; beyond it Accept returns ErrUserLimit.
	MaxPerUser int
	// MessageRate is WS_MESSAGE_RATE: client messages (and pings) per
	// second, with a burst of twice that; 0 means unlimited.
	MessageRate float64
	// Leeway is JWT_LEEWAY: a connection is closed 4001 this long after its
	// token's exp, unless the client refreshed the token.
	Leeway time.Duration
}

// Errors Accept returns before it writes anything, so the caller can answer
// with its own status.
var (
	ErrFull      = errors.New("connection limit reached")
	ErrDraining  = errors.New("server is shutting down")
	ErrUserLimit = errors.New("user connection limit reached")
)

// ErrUpgrade wraps every error of an upgrade that failed once the
// connection was taken over: nothing more can be written to the client.
var ErrUpgrade = errors.New("upgrade failed")

// Params is what the handshake established about a new connection.
type Params struct {
	Claims    auth.Claims    // the verified token: user, expiry, entitlements
	Entries   []*quote.Entry // symbols to subscribe to at once, all entitled
	Invalid   []string       // requested symbols that are not served
	Forbidden []string       // requested symbols the token does not entitle
}

// Server holds the open connections.
type Server struct {
	cfg      Config
	hub      *hub.Hub
	verifier *auth.Verifier // checks tokens sent to refresh a connection
	log      *slog.Logger
	m        *metrics.Metrics
	next     atomic.Uint64 // connection ids
	// poller reads idle connections without a goroutine each; nil when
	// Config.ReaderGoroutines is set or the platform has no epoll.
	poller  *poller
	writers *writers

	mu       sync.Mutex // guards conns, count, users and draining
	conns    map[*conn]struct{}
	count    int            // open connections plus upgrades in progress
	users    map[string]int // the same, per token subject
	draining bool
	wg       sync.WaitGroup // one per connection
}

// NewServer returns a server delivering h's quotes. v verifies the tokens
// clients send to extend their connection.
func NewServer(cfg Config, h *hub.Hub, v *auth.Verifier, log *slog.Logger, m *metrics.Metrics) *Server {
	if cfg.CloseGrace == 0 {
		cfg.CloseGrace = 2 * time.Second
	}
	if cfg.MaxPerUser == 0 {
		cfg.MaxPerUser = cfg.MaxConnections
	}
	s := &Server{cfg: cfg, hub: h, verifier: v, log: log, m: m,
		conns: make(map[*conn]struct{}), users: make(map[string]int),
		writers: newWriters(max(2, runtime.GOMAXPROCS(0)), min(cfg.MaxConnections, 1<<16))}
	if !cfg.ReaderGoroutines {
		p, err := newPoller(log)
		if err != nil {
			log.Warn("no event loop: one reader goroutine per connection", "err", err)
		} else {
			s.poller = p
		}
	}
	return s
}

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// Idle returns the number of open connections subscribed to no symbol.
func (s *Server) Idle() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if c.sub.Count() == 0 {
			n++
		}
	}
	return n
}

// CheckUpgrade reports why r is not a WebSocket upgrade request that this
// server can accept, so the caller can answer 400 before anything else.
func CheckUpgrade(r *http.Request) error {
	switch {
	case r.Method != http.MethodGet:
		return errors.New("method must be GET")
	case !strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		return errors.New(`header "Upgrade: websocket" is required`)
	case !headerHasToken(r.Header.Values("Connection"), "upgrade"):
		return errors.New(`header "Connection: Upgrade" is required`)
	case len(r.Header.Get("Sec-WebSocket-Key")) != 24:
		return errors.New("header Sec-WebSocket-Key is missing or malformed")
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		return errors.New("Sec-WebSocket-Version must be 13")
	}
	return nil
}

func headerHasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// Accept upgrades r and starts serving the connection. It returns
// ErrFull, ErrUserLimit or ErrDraining, having written nothing, when it
// cannot take the connection, and an error wrapping ErrUpgrade when the
// upgrade itself failed.
func (s *Server) Accept(w http.ResponseWriter, r *http.Request, p Params) error {
	user := p.Claims.Subject
	if err := s.reserve(user); err != nil {
		return err
	}
	up := ws.HTTPUpgrader{Timeout: s.cfg.WriteTimeout}
	var neg deflateNegotiator
	if s.cfg.Compression {
		up.Negotiate = neg.negotiate
	}
	nc, rw, _, err := up.Upgrade(r, w)
	if err != nil {
		s.unreserve(user)
		if nc != nil {
			nc.Close()
		}
		return fmt.Errorf("%w: %w", ErrUpgrade, err)
	}
	c := newConn(s, nc, rw.Reader, neg.deflater(), s.next.Add(1), user, r.RemoteAddr)
	if !s.register(c) {
		// Shutdown began during the upgrade.
		c.closeNow(CloseGoingAway, "server shutting down")
		return nil
	}
	c.log().Debug("connected", "symbols", len(p.Entries), "invalid", len(p.Invalid))
	// Accept returns at once, so that the HTTP server's goroutine ends and
	// its deep stack, request and buffers are freed.
	c.start(p)
	return nil
}

func (s *Server) reserve(user string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.draining:
		return ErrDraining
	case s.count >= s.cfg.MaxConnections:
		return ErrFull
	case s.users[user] >= s.cfg.MaxPerUser:
		return ErrUserLimit
	}
	s.count++
	s.users[user]++
	return nil
}

func (s *Server) unreserve(user string) {
	s.mu.Lock()
	s.release(user)
	s.mu.Unlock()
}

// release gives back one reserved slot; s.mu is held.
func (s *Server) release(user string) {
	s.count--
	if s.users[user]--; s.users[user] <= 0 {
		delete(s.users, user)
	}
}

func (s *Server) register(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		s.release(c.user)
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.m.Connections.Inc()
	return true
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.release(c.user)
	s.mu.Unlock()
	s.m.Connections.Dec()
	s.wg.Done()
}

// Shutdown refuses new connections, sends every client close 1001 and waits
// for the connections to end. When ctx ends first it drops the rest. It is
// safe to call twice.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close(CloseGoingAway, "server shutting down")
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		conns = conns[:0]
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.teardown()
		}
		<-done
		return fmt.Errorf("drain connections: %w", ctx.Err())
	}
}
