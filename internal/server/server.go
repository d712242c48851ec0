// Package server is tickstream's HTTP surface: the WebSocket handshake and
// its checks, the REST endpoints, health, readiness and metrics.
package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tickstream/tickstream/internal/auth"
	"github.com/tickstream/tickstream/internal/metrics"
	"github.com/tickstream/tickstream/internal/quote"
	"github.com/tickstream/tickstream/internal/ws"
)

// maxRESTSymbols bounds the symbols of one /v1/quotes request.
const maxRESTSymbols = 1000

// Config holds the handshake's limits.
type Config struct {
	MaxSymbols     int            // WS_MAX_SYMBOLS
	AllowedOrigins []string       // ALLOWED_ORIGINS; empty: the server's own host
	TrustedProxies []netip.Prefix // TRUSTED_PROXIES
	HandshakeRate  float64        // WS_HANDSHAKE_RATE_PER_IP; 0: unlimited

	// Degraded, when set and returning a non-empty reason, makes /readyz
	// answer 200 {"status":"degraded","reason":r}: the instance serves
	// every client, but from a fallback (BROKER=redis with Redis away).
	// It stays 200 so that a load balancer keeps the instance's clients
	// and sends it new ones: taking every instance out of rotation during
	// a Redis outage would drop a market that is still being served.
	Degraded func() string
	// BeforeRead, when set, is called with the entries a /v1/quotes
	// request is about to read. With BROKER=redis an instance follows only
	// the symbols its clients use; it brings the others up to the shared
	// market first, so that every instance answers the same.
	BeforeRead func([]*quote.Entry)
}

// Server routes HTTP requests.
type Server struct {
	log         *slog.Logger
	store       *quote.Store
	ws          *ws.Server
	verifier    *auth.Verifier
	m           *metrics.Metrics
	gatherer    prometheus.Gatherer
	cfg         Config
	perIP       *ipLimiter // nil when HandshakeRate is 0
	instruments []byte     // the /v1/instruments body, encoded once
}

// New returns the HTTP server's handler set.
func New(cfg Config, log *slog.Logger, store *quote.Store, wss *ws.Server, verifier *auth.Verifier,
	m *metrics.Metrics, gatherer prometheus.Gatherer) (*Server, error) {
	list := make([]quote.Instrument, 0, len(store.Entries()))
	for _, e := range store.Entries() {
		list = append(list, e.Instrument)
	}
	body, err := json.Marshal(map[string]any{"instruments": list})
	if err != nil {
		return nil, fmt.Errorf("encode instruments: %w", err)
	}
	s := &Server{log: log, store: store, ws: wss, verifier: verifier, m: m,
		gatherer: gatherer, cfg: cfg, instruments: body}
	if cfg.HandshakeRate > 0 {
		s.perIP = newIPLimiter(cfg.HandshakeRate)
	}
	return s, nil
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws/quotes", s.handleWS)
	mux.HandleFunc("GET /v1/quotes", s.authenticated(s.handleQuotes))
	mux.HandleFunc("GET /v1/instruments", s.authenticated(s.handleInstruments))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.handleReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.refuse(w, r, reject(http.StatusNotFound, codeNotFound, "no such endpoint"))
	})
	return s.guard(mux)
}

// guard refuses, with a JSON body, oversized requests and methods other
// than GET or HEAD (405), before any route reads them.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := checkSize(r); err != nil {
			s.refuse(w, r, err)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			s.refuse(w, r, reject(http.StatusMethodNotAllowed, codeMethod, "only GET is supported"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// refuse answers err and counts it; it returns the answer.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, err error) *apiError {
	ae := writeError(w, err)
	s.m.Rejections.WithLabelValues(ae.code).Inc()
	s.log.Debug("request refused", "status", ae.status, "code", ae.code, "remote", r.RemoteAddr, "path", r.URL.Path)
	return ae
}

// handleWS runs every handshake check before the upgrade, cheapest first:
// draining (503), handshake rate per IP (429), Origin (403), token (401),
// upgrade headers (400), symbols (400), entitlements (403), connections of
// the user (429), capacity (503).
func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	p, err := s.checkHandshake(r)
	if err == nil {
		err = s.ws.Accept(w, r, p)
		if err == nil {
			s.m.Handshakes.WithLabelValues("accepted").Inc()
			return
		}
		if errors.Is(err, ws.ErrUpgrade) {
			s.log.Debug("upgrade failed", "err", err, "remote", r.RemoteAddr)
			s.m.Handshakes.WithLabelValues("upgrade_failed").Inc()
			return // the connection was hijacked: nothing more to write
		}
	}
	ae := s.refuse(w, r, err)
	s.m.Handshakes.WithLabelValues(fmt.Sprint(ae.status)).Inc()
}

func (s *Server) checkHandshake(r *http.Request) (ws.Params, error) {
	if s.ws.Draining() {
		return ws.Params{}, ws.ErrDraining
	}
	if s.perIP != nil {
		if d := s.perIP.wait(clientIP(r, s.cfg.TrustedProxies)); d > 0 {
			return ws.Params{}, tooFast(d)
		}
	}
	if err := checkOrigin(r, s.cfg.AllowedOrigins); err != nil {
		return ws.Params{}, err
	}
	claims, err := s.authenticate(r)
	if err != nil {
		return ws.Params{}, err
	}
	if err := ws.CheckUpgrade(r); err != nil {
		return ws.Params{}, badRequest(codeNotWebSocket, "not a WebSocket upgrade: "+err.Error())
	}
	entries, invalid, err := s.symbols(r, s.cfg.MaxSymbols)
	if err != nil {
		return ws.Params{}, err
	}
	entries, forbidden := ws.Entitled(claims, entries)
	if len(entries) == 0 && len(forbidden) > 0 {
		return ws.Params{}, reject(http.StatusForbidden, codeForbiddenSymbols,
			fmt.Sprintf("the token does not entitle any of the %d requested symbols", len(forbidden)))
	}
	return ws.Params{Claims: claims, Entries: entries, Invalid: invalid, Forbidden: forbidden}, nil
}

func (s *Server) authenticate(r *http.Request) (auth.Claims, error) {
	token, err := auth.FromRequest(r)
	if err != nil {
		return auth.Claims{}, err
	}
	return s.verifier.Verify(token)
}

func (s *Server) authenticated(next func(http.ResponseWriter, *http.Request, auth.Claims)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		claims, err := s.authenticate(r)
		if err != nil {
			s.refuse(w, r, err)
			return
		}
		next(w, r, claims)
	}
}

// symbols reads the symbols query parameter. Absent, it returns no entries
// and no error; present, it must name at most max symbols (valid or not)
// and at least one served symbol.
func (s *Server) symbols(r *http.Request, max int) ([]*quote.Entry, []string, error) {
	raw, present := r.URL.Query()["symbols"]
	if !present {
		return nil, []string{}, nil
	}
	list := quote.ParseList(strings.Join(raw, ","))
	if len(list) > max {
		return nil, nil, badRequest(codeTooMany, fmt.Sprintf("%d symbols requested; the limit is %d", len(list), max))
	}
	entries, invalid := ws.Resolve(s.store, list)
	if len(entries) == 0 {
		return nil, nil, badRequest(codeNoValidSymbols, fmt.Sprintf("none of the %d requested symbols is served; see /v1/instruments", len(list)))
	}
	return entries, invalid, nil
}

// handleQuotes answers {"quotes":{SYMBOL: quote}} in the shape the patches
// build, from the quotes' shared JSON. Without symbols it returns every
// quote the token entitles; unknown symbols are listed in invalid_symbols,
// symbols the token does not entitle in forbidden_symbols.
func (s *Server) handleQuotes(w http.ResponseWriter, r *http.Request, claims auth.Claims) {
	entries, invalid, err := s.symbols(r, maxRESTSymbols)
	if err != nil {
		s.refuse(w, r, err)
		return
	}
	requested := entries != nil
	if !requested {
		entries = s.store.Entries()
	}
	entries, forbidden := ws.Entitled(claims, entries)
	if requested && len(entries) == 0 {
		s.refuse(w, r, reject(http.StatusForbidden, codeForbiddenSymbols,
			fmt.Sprintf("the token does not entitle any of the %d requested symbols", len(forbidden))))
		return
	}
	if s.cfg.BeforeRead != nil {
		s.cfg.BeforeRead(entries)
	}
	b := make([]byte, 0, 64+len(entries)*320)
	b = append(b, `{"quotes":{`...)
	for i, e := range entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = e.AppendKey(b)
		b = append(b, ':')
		b = append(b, e.Latest().JSON...)
	}
	b = append(b, '}')
	if len(invalid) > 0 {
		inv, _ := json.Marshal(invalid) // a []string always marshals
		b = append(b, `,"invalid_symbols":`...)
		b = append(b, inv...)
	}
	if requested && len(forbidden) > 0 {
		forb, _ := json.Marshal(forbidden)
		b = append(b, `,"forbidden_symbols":`...)
		b = append(b, forb...)
	}
	b = append(b, '}')
	writeBody(w, http.StatusOK, b)
}

func (s *Server) handleInstruments(w http.ResponseWriter, _ *http.Request, _ auth.Claims) {
	writeBody(w, http.StatusOK, s.instruments)
}

func (s *Server) handleReady(w http.ResponseWriter, _ *http.Request) {
	if s.ws.Draining() {
		w.Header().Set("Retry-After", fmt.Sprint(retryAfter))
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
		return
	}
	if s.cfg.Degraded != nil {
		if reason := s.cfg.Degraded(); reason != "" {
			writeJSON(w, http.StatusOK, map[string]string{"status": "degraded", "reason": reason})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
