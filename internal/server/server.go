// Package server is tickstream's HTTP surface: the WebSocket handshake and
// its checks, the REST endpoints, health, readiness and metrics.
package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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

// Server routes HTTP requests.
type Server struct {
	log         *slog.Logger
	store       *quote.Store
	ws          *ws.Server
	verifier    *auth.Verifier
	m           *metrics.Metrics
	gatherer    prometheus.Gatherer
	maxSymbols  int
	instruments []byte // the /v1/instruments body, encoded once

	degraded   func() string        // see ReportDegraded; nil: never degraded
	beforeRead func([]*quote.Entry) // see BeforeRead; nil: the store is current
}

// BeforeRead registers f to be called with the entries a /v1/quotes
// request is about to read. With BROKER=redis an instance follows only the
// symbols its clients use; f brings the others up to the shared market
// first, so that every instance answers the same. Call it before serving.
func (s *Server) BeforeRead(f func([]*quote.Entry)) { s.beforeRead = f }

// ReportDegraded makes /readyz answer 200 {"status":"degraded","reason":r}
// while f returns a non-empty r: the instance serves every client, but
// from a fallback (BROKER=redis with Redis away). It stays 200 so that a
// load balancer keeps the instance's clients and sends it new ones: taking
// every instance out of rotation during a Redis outage would drop a market
// that is still being served. Call it before serving.
func (s *Server) ReportDegraded(f func() string) { s.degraded = f }

// New returns the HTTP server's handler set. maxSymbols is WS_MAX_SYMBOLS.
func New(log *slog.Logger, store *quote.Store, wss *ws.Server, verifier *auth.Verifier,
	m *metrics.Metrics, gatherer prometheus.Gatherer, maxSymbols int) (*Server, error) {
	list := make([]quote.Instrument, 0, len(store.Entries()))
	for _, e := range store.Entries() {
		list = append(list, e.Instrument)
	}
	body, err := json.Marshal(map[string]any{"instruments": list})
	if err != nil {
		return nil, fmt.Errorf("encode instruments: %w", err)
	}
	return &Server{log: log, store: store, ws: wss, verifier: verifier, m: m,
		gatherer: gatherer, maxSymbols: maxSymbols, instruments: body}, nil
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
		writeError(w, &apiError{http.StatusNotFound, codeNotFound, "no such endpoint"})
	})
	return methodGuard(mux)
}

// methodGuard answers 405 with a JSON body for the known paths when the
// method is not GET or HEAD.
func methodGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, &apiError{http.StatusMethodNotAllowed, codeMethod, "only GET is supported"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// handleWS runs every handshake check before the upgrade, in this order:
// draining (503), token (401), upgrade headers (400), symbols (400),
// capacity (503).
func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	p, err := s.checkHandshake(r)
	if err == nil {
		err = s.ws.Accept(w, r, p)
		if err == nil {
			s.m.Handshakes.WithLabelValues("accepted").Inc()
			return
		}
		if !errors.Is(err, ws.ErrFull) && !errors.Is(err, ws.ErrDraining) {
			s.log.Debug("upgrade failed", "err", err, "remote", r.RemoteAddr)
			s.m.Handshakes.WithLabelValues("upgrade_failed").Inc()
			return // the connection was hijacked: nothing more to write
		}
	}
	ae := writeError(w, err)
	s.m.Handshakes.WithLabelValues(fmt.Sprint(ae.status)).Inc()
	s.log.Debug("handshake rejected", "status", ae.status, "code", ae.code, "remote", r.RemoteAddr)
}

func (s *Server) checkHandshake(r *http.Request) (ws.Params, error) {
	if s.ws.Draining() {
		return ws.Params{}, ws.ErrDraining
	}
	claims, err := s.authenticate(r)
	if err != nil {
		return ws.Params{}, err
	}
	if err := ws.CheckUpgrade(r); err != nil {
		return ws.Params{}, badRequest(codeNotWebSocket, "not a WebSocket upgrade: "+err.Error())
	}
	entries, invalid, err := s.symbols(r, s.maxSymbols)
	if err != nil {
		return ws.Params{}, err
	}
	return ws.Params{Subject: claims.Subject, Entries: entries, Invalid: invalid}, nil
}

func (s *Server) authenticate(r *http.Request) (auth.Claims, error) {
	token, err := auth.FromRequest(r)
	if err != nil {
		return auth.Claims{}, err
	}
	return s.verifier.Verify(token)
}

func (s *Server) authenticated(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.authenticate(r); err != nil {
			writeError(w, err)
			return
		}
		next(w, r)
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
// quote; unknown symbols are listed in invalid_symbols.
func (s *Server) handleQuotes(w http.ResponseWriter, r *http.Request) {
	entries, invalid, err := s.symbols(r, maxRESTSymbols)
	if err != nil {
		writeError(w, err)
		return
	}
	if entries == nil {
		entries = s.store.Entries()
	}
	if s.beforeRead != nil {
		s.beforeRead(entries)
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
	b = append(b, '}')
	writeBody(w, http.StatusOK, b)
}

func (s *Server) handleInstruments(w http.ResponseWriter, _ *http.Request) {
	writeBody(w, http.StatusOK, s.instruments)
}

func (s *Server) handleReady(w http.ResponseWriter, _ *http.Request) {
	if s.ws.Draining() {
		w.Header().Set("Retry-After", fmt.Sprint(retryAfter))
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
		return
	}
	if s.degraded != nil {
		if reason := s.degraded(); reason != "" {
			writeJSON(w, http.StatusOK, map[string]string{"status": "degraded", "reason": reason})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
