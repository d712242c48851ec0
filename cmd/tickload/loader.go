package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Reconnect backoff: waits grow from backoffMin to backoffMax. Each is
// drawn from the upper half of a doubling step, so that clients dropped
// together do not come back together, even at the cap.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 2 * time.Second
)

// closeTimeout bounds how long the end of a run waits for the close
// handshakes.
const closeTimeout = 10 * time.Second

// loader runs the connections: it opens them at -rate, keeps one reader
// per connection, reopens churned and (with -reconnect) dropped ones, and
// closes them all at the end.
type loader struct {
	cfg    config
	dialer *dialer
	stats  *stats
	slots  []*slot

	sem chan struct{} // bounds the dials in flight to 2*rate

	dialMu   sync.Mutex // guards noDial and the Add of dialing
	noDial   bool       // set by stopDials: no dial starts any more
	stopDial chan struct{}
	dialing  sync.WaitGroup // dials waiting for sem or in flight

	ending    chan struct{} // closed by closeAll
	closeOnce sync.Once
	initial   sync.WaitGroup // one per slot until its first dial has finished
	running   sync.WaitGroup // one per slot goroutine
}

func newLoader(cfg config, d *dialer, st *stats, pool []string) *loader {
	inFlight := int(min(max(2*cfg.rate, 1), 100_000))
	l := &loader{cfg: cfg, dialer: d, stats: st, sem: make(chan struct{}, inFlight),
		stopDial: make(chan struct{}), ending: make(chan struct{})}
	slow := slowSlots(cfg.slow, cfg.conns)
	l.slots = make([]*slot, cfg.conns)
	for i := range l.slots {
		l.slots[i] = &slot{id: i, symbols: assign(i, cfg.symbolsPerConn, pool), slow: slow[i], shard: st.shard(i)}
	}
	return l
}

// open starts the slots at -rate and returns when all are started or ctx
// ends. The pace is kept by a ticker that releases the connections due by
// now, so rates above the ticker's frequency work; a dial waits for room
// among those in flight, so a slow server slows the opening instead of
// piling up dials.
func (l *loader) open(ctx context.Context) {
	l.initial.Add(len(l.slots))
	period := max(time.Duration(float64(time.Second)/l.cfg.rate), 5*time.Millisecond)
	tick := time.NewTicker(period)
	defer tick.Stop()
	start := time.Now()
	next := 0
	for next < len(l.slots) {
		due := min(len(l.slots), int(time.Since(start).Seconds()*l.cfg.rate)+1)
		for ; next < due; next++ {
			if !l.acquireDial(ctx) {
				l.initial.Add(next - len(l.slots)) // those never started
				return
			}
			l.running.Add(1)
			go l.runSlot(l.slots[next])
		}
		if next == len(l.slots) {
			return
		}
		select {
		case <-ctx.Done():
			l.initial.Add(next - len(l.slots))
			return
		case <-tick.C:
		}
	}
}

// runSlot runs slot s's connections one after the other. It is started
// holding a dial permit.
func (l *loader) runSlot(s *slot) {
	defer l.running.Done()
	first, reconnecting := true, false
	var b backoff
	for {
		start := time.Now()
		c, err := l.dialer.dial(context.Background(), s.id, s.symbols, &s.shard.wire)
		l.releaseDial()
		if first {
			l.initial.Done()
			first = false
		}
		if err != nil {
			var he *handshakeError
			reason := "dial"
			if errors.As(err, &he) {
				reason = he.reason
			}
			l.stats.failure(reason, fmt.Sprintf("conn %d: %v", s.id, err))
			if !l.cfg.reconnect || !b.wait(l.stopDial) || !l.acquireDial(context.Background()) {
				return
			}
			continue
		}
		l.stats.connectedIn(time.Since(start))
		if reconnecting {
			l.stats.reconnects.Add(1)
			reconnecting = false
		}
		b.reset()
		if !s.attach(c, l.ending) {
			return
		}
		l.stats.open.Add(1)
		err = s.read(c, l.stats)
		if errors.Is(err, errStopReading) {
			<-l.ending // a slow connection stays open, unread, to the end
		}
		byUs := s.detach()
		l.stats.open.Add(-1)
		select {
		case <-l.ending:
			return
		default:
		}
		if !byUs {
			l.stats.closed(closeCode(err))
			if !l.cfg.reconnect {
				return
			}
			reconnecting = true
			if !b.wait(l.stopDial) {
				return
			}
		}
		// Churned, or dropped with -reconnect: open a new connection.
		if !l.acquireDial(context.Background()) {
			return
		}
	}
}

// acquireDial waits for a dial permit. It returns false once stopDials
// has been called or ctx ends.
func (l *loader) acquireDial(ctx context.Context) bool {
	l.dialMu.Lock()
	if l.noDial {
		l.dialMu.Unlock()
		return false
	}
	l.dialing.Add(1)
	l.dialMu.Unlock()
	select {
	case l.sem <- struct{}{}:
		return true
	case <-l.stopDial:
	case <-ctx.Done():
	}
	l.dialing.Done()
	return false
}

func (l *loader) releaseDial() {
	<-l.sem
	l.dialing.Done()
}

// stopDials lets no new dial start and waits for those in flight, each
// bounded by -timeout, so that the final check sees every connection that
// will ever open. Safe to call twice.
func (l *loader) stopDials() {
	l.dialMu.Lock()
	if !l.noDial {
		l.noDial = true
		close(l.stopDial)
	}
	l.dialMu.Unlock()
	l.dialing.Wait()
}

// churn closes -churn random non-slow connections per second until ctx
// ends; their slots reopen them.
func (l *loader) churn(ctx context.Context) {
	var candidates []*slot
	for _, s := range l.slots {
		if !s.slow {
			candidates = append(candidates, s)
		}
	}
	period := max(time.Duration(float64(time.Second)/l.cfg.churn), 5*time.Millisecond)
	tick := time.NewTicker(period)
	defer tick.Stop()
	start, done := time.Now(), 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		due := int(time.Since(start).Seconds() * l.cfg.churn)
		for ; done < due; done++ {
			// A pick that is between connections is skipped; a few
			// tries find an open one unless nearly all are reopening.
			for range 8 {
				if candidates[rand.IntN(len(candidates))].closeByUs(websocket.StatusNormalClosure, "churn") {
					l.stats.churned.Add(1)
					break
				}
			}
		}
	}
}

// closeAll closes every connection and waits, at most closeTimeout, for
// the slots to finish. Safe to call twice.
func (l *loader) closeAll() {
	l.closeOnce.Do(l.closeSlots)
}

func (l *loader) closeSlots() {
	close(l.ending)
	l.stopDials()
	for _, s := range l.slots {
		s.closeByUs(websocket.StatusNormalClosure, "load test done")
	}
	done := make(chan struct{})
	go func() { l.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeTimeout):
	}
}

// backoff is one slot's reconnect delay.
type backoff struct{ step time.Duration }

// wait sleeps for the next delay and reports false if stop closed first.
func (b *backoff) wait(stop <-chan struct{}) bool {
	b.step = min(max(2*b.step, 2*backoffMin), backoffMax)
	d := b.step/2 + rand.N(b.step/2+1) // backoffMin..backoffMax
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

func (b *backoff) reset() { b.step = 0 }
