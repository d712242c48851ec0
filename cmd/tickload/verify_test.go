package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// restServer answers /v1/quotes from quotes, as JSON of {"quotes":{...}}.
func restServer(t *testing.T, quotes map[string]*quoteDoc) *restClient {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		out := map[string]*quoteDoc{}
		for _, sym := range strings.Split(r.URL.Query().Get("symbols"), ",") {
			if q := quotes[sym]; q != nil {
				out[sym] = q
			}
		}
		json.NewEncoder(w).Encode(map[string]any{"quotes": out})
	}))
	t.Cleanup(srv.Close)
	return &restClient{base: srv.URL, token: "tok", client: srv.Client()}
}

func quote(sym string, price float64, at string) *quoteDoc {
	return &quoteDoc{Symbol: sym, Name: sym + " Inc.", Type: "STOCK", CurrentPrice: price, BasePrice: 100,
		Change: price - 100, LastUpdated: at, Volume: 1}
}

// openSlot is a slot whose connection is open (a placeholder: verify
// only checks that there is one) and whose document holds quotes.
func openSlot(id int, symbols []string, quotes ...*quoteDoc) *slot {
	s := &slot{id: id, symbols: symbols, ws: &websocket.Conn{}, snapshot: true, seq: 1,
		doc: document{quotes: map[string]*quoteDoc{}}}
	for _, q := range quotes {
		cp := *q
		s.doc.quotes[q.Symbol] = &cp
	}
	return s
}

func TestVerify(t *testing.T) {
	const t1, t2 = "2025-01-02T03:04:05.000Z", "2025-01-02T03:04:06.000Z"
	rest := restServer(t, map[string]*quoteDoc{
		"A": quote("A", 101, t2),
		"B": quote("B", 99, t2),
	})
	closed := openSlot(5, []string{"A"}, quote("A", 1, t1))
	closed.ws = nil
	slow := openSlot(6, []string{"A"}, quote("A", 1, t1))
	slow.slow = true
	l := &loader{slots: []*slot{
		openSlot(0, []string{"A", "B"}, quote("A", 101, t2), quote("B", 99, t2)), // matches
		openSlot(1, []string{"A"}, quote("A", 102, t2)),                          // differs at the same last_updated
		openSlot(2, []string{"B"}, quote("B", 98, t1)),                           // never catches up
		openSlot(3, []string{"A", "B"}, quote("A", 101, t2)),                     // lacks B
		openSlot(4, []string{"A"}, quote("A", 101, t2), quote("B", 99, t2)),      // holds B too
		closed, // not checked
		slow,   // not checked
	}}
	start := time.Now()
	v := l.verify(context.Background(), rest, 200*time.Millisecond)
	if v.err != nil {
		t.Fatal(v.err)
	}
	if v.verified != 1 || v.mismatches != 4 || v.unverified != 0 {
		t.Errorf("got %d verified, %d mismatches, %d unverified, want 1, 4, 0", v.verified, v.mismatches, v.unverified)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("verify took %v, want about the 200ms catch-up time", d)
	}
	wantDetails := []string{
		"conn 1 ", "current_price: got 102, want 101",
		"conn 2 ", "never caught up", "last_updated " + t1 + ", REST answered " + t2,
		"conn 3 ", "document holds symbols [A]",
		"conn 4 ", "document holds symbols [A B]",
	}
	all := strings.Join(v.details, "\n")
	for _, want := range wantDetails {
		if !strings.Contains(all, want) {
			t.Errorf("details %q lack %q", all, want)
		}
	}
}

// TestVerifyCatchesUp checks that a connection behind REST is matched once
// its reader applies the update, within the catch-up time.
func TestVerifyCatchesUp(t *testing.T) {
	const t1, t2 = "2025-01-02T03:04:05.000Z", "2025-01-02T03:04:06.000Z"
	rest := restServer(t, map[string]*quoteDoc{"A": quote("A", 101, t2)})
	s := openSlot(0, []string{"A"}, quote("A", 100, t1))
	l := &loader{slots: []*slot{s}}
	go func() {
		time.Sleep(100 * time.Millisecond)
		s.mu.Lock()
		s.doc.quotes["A"] = quote("A", 101, t2)
		s.mu.Unlock()
	}()
	v := l.verify(context.Background(), rest, 2*time.Second)
	if v.verified != 1 || v.mismatches != 0 {
		t.Errorf("got %d verified, %d mismatches, want 1, 0: %v", v.verified, v.mismatches, v.details)
	}
}

// TestVerifyOlderVersion checks that a connection matches a version REST
// served in an earlier round, though REST has moved on since: the
// connection lags REST by its delivery latency.
func TestVerifyOlderVersion(t *testing.T) {
	const t0, t1, t2 = "2025-01-02T03:04:04.000Z", "2025-01-02T03:04:05.000Z", "2025-01-02T03:04:06.000Z"
	var mu sync.Mutex
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		q := quote("A", 101, t1) // the first round sees t1, later ones t2
		if requests > 1 {
			q = quote("A", 102, t2)
		}
		mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"quotes": map[string]*quoteDoc{"A": q}})
	}))
	defer srv.Close()
	rest := &restClient{base: srv.URL, client: srv.Client()}

	s := openSlot(0, []string{"A"}, quote("A", 100, t0))
	go func() {
		// Once the second round has fetched t2, the connection reaches
		// t1, which only the first round saw.
		for {
			mu.Lock()
			n := requests
			mu.Unlock()
			if n >= 2 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		s.mu.Lock()
		s.doc.quotes["A"] = quote("A", 101, t1)
		s.mu.Unlock()
	}()
	l := &loader{slots: []*slot{s}}
	v := l.verify(context.Background(), rest, time.Second)
	if v.verified != 1 || v.mismatches != 0 {
		t.Errorf("got %d verified, %d mismatches, want 1, 0: %v", v.verified, v.mismatches, v.details)
	}
}

// TestVerifyRESTLagsStream: under load REST can answer older versions than
// the stream already delivered. A document that moves on before REST serves
// the version it held still matches once REST serves that version, and a
// version REST serves with other fields is still a mismatch.
func TestVerifyRESTLagsStream(t *testing.T) {
	const t1, t2, t3 = "2025-01-02T03:04:05.000Z", "2025-01-02T03:04:06.000Z", "2025-01-02T03:04:07.000Z"
	var mu sync.Mutex
	served := quote("A", 101, t1) // REST is one version behind at first
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"quotes": map[string]*quoteDoc{"A": served}})
	}))
	t.Cleanup(srv.Close)
	rest := &restClient{base: srv.URL, token: "tok", client: srv.Client()}
	good := openSlot(0, []string{"A"}, quote("A", 102, t2))
	bad := openSlot(1, []string{"A"}, quote("A", 555, t2)) // differs from what REST will serve at t2
	l := &loader{slots: []*slot{good, bad}}
	go func() {
		time.Sleep(60 * time.Millisecond)
		for _, s := range []*slot{good, bad} { // the stream moves on before REST serves t2
			s.mu.Lock()
			s.doc.quotes["A"] = quote("A", 103, t3)
			s.mu.Unlock()
		}
		mu.Lock()
		served = quote("A", 102, t2)
		mu.Unlock()
	}()
	v := l.verify(context.Background(), rest, 400*time.Millisecond)
	if v.verified != 1 || v.mismatches != 1 {
		t.Errorf("got %d verified, %d mismatches, want 1 and 1: %v", v.verified, v.mismatches, v.details)
	}
}

// TestVerifyInconclusive: a document ahead of every REST answer, which REST
// never contradicts, is inconclusive, not a mismatch; one older than every
// REST answer is a mismatch (it never caught up).
func TestVerifyInconclusive(t *testing.T) {
	const t1, t2, t3 = "2025-01-02T03:04:05.000Z", "2025-01-02T03:04:06.000Z", "2025-01-02T03:04:07.000Z"
	rest := restServer(t, map[string]*quoteDoc{"A": quote("A", 102, t2)})
	ahead := openSlot(0, []string{"A"}, quote("A", 103, t3))
	behind := openSlot(1, []string{"A"}, quote("A", 101, t1))
	l := &loader{slots: []*slot{ahead, behind}}
	v := l.verify(context.Background(), rest, 150*time.Millisecond)
	if v.inconclusive != 1 || v.mismatches != 1 || v.verified != 0 {
		t.Errorf("got %d inconclusive, %d mismatches, %d verified, want 1, 1, 0", v.inconclusive, v.mismatches, v.verified)
	}
}

// TestVerifyLaggingButMoving: a document behind every REST answer that
// keeps moving during the check is lagging (inconclusive), not stuck.
func TestVerifyLaggingButMoving(t *testing.T) {
	const t1, t2, t3 = "2025-01-02T03:04:05.000Z", "2025-01-02T03:04:06.000Z", "2025-01-02T03:04:07.000Z"
	rest := restServer(t, map[string]*quoteDoc{"A": quote("A", 103, t3)})
	lagging := openSlot(0, []string{"A"}, quote("A", 101, t1))
	l := &loader{slots: []*slot{lagging}}
	go func() {
		time.Sleep(60 * time.Millisecond)
		lagging.mu.Lock()
		lagging.doc.quotes["A"] = quote("A", 102, t2)
		lagging.mu.Unlock()
	}()
	v := l.verify(context.Background(), rest, 200*time.Millisecond)
	if v.inconclusive != 1 || v.mismatches != 0 {
		t.Errorf("got %d inconclusive, %d mismatches, want 1 and 0: %v", v.inconclusive, v.mismatches, v.details)
	}
}
