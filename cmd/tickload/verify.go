package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Final check timing: how long connections may take to catch up with the
// REST answers by default (-check-wait), the pause between rounds of
// comparison, and between REST requests.
const (
	catchUpTime = 5 * time.Second
	checkPause  = 20 * time.Millisecond
	restPause   = 5 * time.Millisecond
)

// historyLen is how many distinct versions of each quote the check keeps
// from successive REST answers. A connection lags the REST API by its
// delivery latency, so the version it holds is often one REST has already
// moved past; the history lets it match that version instead of chasing
// the latest one while prices keep moving. 512 versions are 51 s of
// 100 ms ticks.
const historyLen = 512

// recorder polls /v1/quotes as often as it can while the check runs and
// keeps every distinct version it sees. It runs apart from the comparison
// rounds: a version must be sampled by REST to be matched, and rounds over
// thousands of connections are too slow to sample every tick of a loaded
// server.
type recorder struct {
	rest    *restClient
	symbols []string

	mu      sync.Mutex // guards history and err
	history map[string][]*quoteDoc
	err     error
}

func (r *recorder) run(ctx context.Context) {
	for ctx.Err() == nil {
		got, err := r.rest.quotes(ctx, r.symbols)
		r.mu.Lock()
		if err != nil {
			if ctx.Err() == nil {
				r.err = err
			}
			r.mu.Unlock()
			return
		}
		for sym, q := range got {
			h := r.history[sym]
			if len(h) == 0 || !h[len(h)-1].equal(q) {
				if len(h) == historyLen {
					h = slices.Delete(h, 0, 1)
				}
				r.history[sym] = append(h, q)
			}
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(restPause):
		}
	}
}

// verdict is the outcome of the final check.
type verdict struct {
	verified   int // connections whose every quote matched REST
	mismatches int // connections that differed or never caught up
	// inconclusive connections matched no REST answer, but no REST answer
	// contradicts them either (see checking.inconclusive).
	inconclusive int
	unverified   int      // connections that closed during the check
	details      []string // the first few mismatches, explained
	err          error    // REST failed: the connections left were not checked
}

// maxDetails is how many mismatches are explained on stderr.
const maxDetails = 5

// checking is one open, non-slow connection under check: the indexes of
// its symbols not matched yet.
type checking struct {
	s    *slot
	left []int
	// claims holds, per symbol index, versions the document held while
	// they were newer than anything REST had answered: under load REST
	// answers can lag the stream, and the document moves on before REST
	// serves the version it held. A claim matches later, when REST serves
	// it. At most maxClaims per symbol.
	claims map[int][]quoteDoc
	// first holds, per symbol index, the last_updated the document had at
	// the first round, to tell a lagging document from a stuck one.
	first map[int]string
}

const maxClaims = 16

// verify compares the document of every open, non-slow connection with
// /v1/quotes. A quote matches when REST served, at some round, a version
// with the same last_updated and equal fields. The readers keep running,
// so a connection that lags catches up; one that has not matched every
// symbol after catchUp (catchUpTime in a run), or holds other symbols than
// it asked for, is a mismatch.
func (l *loader) verify(ctx context.Context, rest *restClient, catchUp time.Duration) verdict {
	var v verdict
	var pending []*checking
	for _, s := range l.slots {
		s.mu.Lock()
		open := s.ws != nil && !s.byUs
		s.mu.Unlock()
		if open && !s.slow {
			left := make([]int, len(s.symbols))
			for i := range left {
				left[i] = i
			}
			pending = append(pending, &checking{s: s, left: left})
		}
	}
	rec := &recorder{rest: rest, symbols: symbolsOf(pending), history: map[string][]*quoteDoc{}}
	recCtx, stopRec := context.WithCancel(ctx)
	recDone := make(chan struct{})
	go func() { rec.run(recCtx); close(recDone) }()
	defer func() { stopRec(); <-recDone }()
	deadline := time.Now().Add(catchUp)
	var history map[string][]*quoteDoc
	for len(pending) > 0 {
		time.Sleep(checkPause)
		rec.mu.Lock()
		history, err := rec.history, rec.err
		if err != nil {
			rec.mu.Unlock()
			v.err = err
			v.unverified += len(pending)
			return v
		}
		keep := pending[:0]
		for _, c := range pending {
			switch c.check(history) {
			case checkGone:
				v.unverified++
			case checkDone:
				v.verified++
			default:
				keep = append(keep, c)
			}
		}
		rec.mu.Unlock()
		pending = keep
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
	}
	stopRec()
	<-recDone
	history = rec.history
	for _, c := range pending {
		// A last look with every REST answer the recorder got.
		switch c.check(history) {
		case checkDone:
			v.verified++
			continue
		case checkGone:
			v.unverified++
			continue
		}
		if c.inconclusive(history) {
			v.inconclusive++
			continue
		}
		v.mismatches++
		if len(v.details) < maxDetails {
			v.details = append(v.details, c.explain(history))
		}
	}
	return v
}

// contradiction says why a connection that matched no REST answer is
// wrong, or returns "" when nothing contradicts it: for every symbol left,
// REST never answered a version with a last_updated the document held (it
// answered older and newer ones, or only older ones while it lagged the
// stream, or the document lagged behind REST but kept moving). That
// happens when the machine is saturated: REST answers sample too few of
// the ticks and documents lag by seconds; such a connection is
// inconclusive. A version REST served with other fields (held now or in a
// claim), a document older than every REST answer that did not move during
// the check (stuck), or a wrong set of symbols is a mismatch. s.mu is held.
func (c *checking) contradiction(history map[string][]*quoteDoc) string {
	s := c.s
	switch {
	case !s.snapshot:
		return "no snapshot received"
	case !c.sameSymbols():
		held := make([]string, 0, len(s.doc.quotes))
		for sym := range s.doc.quotes {
			held = append(held, sym)
		}
		slices.Sort(held)
		return fmt.Sprintf("document holds symbols %v", held)
	}
	for _, i := range c.left {
		sym := s.symbols[i]
		q, h := s.doc.quotes[sym], history[sym]
		if len(h) == 0 {
			if len(history) == 0 {
				continue // no REST answer arrived at all: nothing to compare with
			}
			return sym + ": REST did not return it"
		}
		if q.LastUpdated < h[0].LastUpdated && q.LastUpdated <= c.first[i] {
			return fmt.Sprintf("%s never caught up (did not move during the check): last_updated %s, REST answered %s to %s", sym, q.LastUpdated, h[0].LastUpdated, h[len(h)-1].LastUpdated)
		}
		for _, held := range append([]quoteDoc{*q}, c.claims[i]...) {
			for _, r := range h {
				if r.LastUpdated == held.LastUpdated && !held.equal(r) {
					return fmt.Sprintf("%s at last_updated %s: %s", sym, held.LastUpdated, held.diff(r))
				}
			}
		}
	}
	return ""
}

func (c *checking) inconclusive(history map[string][]*quoteDoc) bool {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.contradiction(history) == ""
}

// explain says why a connection did not match.
func (c *checking) explain(history map[string][]*quoteDoc) string {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return fmt.Sprintf("conn %d (symbols %v): %s", c.s.id, c.s.symbols, c.contradiction(history))
}

// symbolsOf returns the symbols still to match, each once.
func symbolsOf(pending []*checking) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range pending {
		for _, i := range c.left {
			if sym := c.s.symbols[i]; !seen[sym] {
				seen[sym] = true
				out = append(out, sym)
			}
		}
	}
	return out
}

type checkResult int

const (
	checkPending checkResult = iota
	checkDone
	checkGone // the connection closed: nothing to compare
)

// check matches what it can of the connection's document against the
// history.
func (c *checking) check(history map[string][]*quoteDoc) checkResult {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.ws == nil || s.byUs:
		return checkGone
	case !s.snapshot || !c.sameSymbols():
		return checkPending
	}
	if c.first == nil {
		c.first = make(map[int]string, len(c.left))
		for _, i := range c.left {
			c.first[i] = s.doc.quotes[s.symbols[i]].LastUpdated
		}
	}
	keep := c.left[:0]
	for _, i := range c.left {
		h := history[s.symbols[i]]
		q := s.doc.quotes[s.symbols[i]]
		if slices.ContainsFunc(h, q.equal) || c.claimServed(i, h) {
			continue
		}
		keep = append(keep, i)
		if len(h) > 0 && q.LastUpdated > h[len(h)-1].LastUpdated {
			c.claim(i, *q)
		}
	}
	c.left = keep
	if len(c.left) == 0 {
		return checkDone
	}
	return checkPending
}

// claimServed reports whether REST has served one of the versions the
// document held for symbol index i.
func (c *checking) claimServed(i int, h []*quoteDoc) bool {
	for _, q := range c.claims[i] {
		if slices.ContainsFunc(h, q.equal) {
			return true
		}
	}
	return false
}

func (c *checking) claim(i int, q quoteDoc) {
	if c.claims == nil {
		c.claims = map[int][]quoteDoc{}
	}
	cl := c.claims[i]
	if len(cl) > 0 && cl[len(cl)-1].equal(&q) {
		return
	}
	if len(cl) == maxClaims {
		cl = slices.Delete(cl, 0, 1)
	}
	c.claims[i] = append(cl, q)
}

// sameSymbols reports whether the document holds exactly the symbols the
// connection asked for; s.mu is held.
func (c *checking) sameSymbols() bool {
	d := c.s.doc.quotes
	if len(d) != len(c.s.symbols) {
		return false
	}
	for _, sym := range c.s.symbols {
		if d[sym] == nil {
			return false
		}
	}
	return true
}
