package ws

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tickstream/tickstream/internal/hub"
	"github.com/tickstream/tickstream/internal/metrics"
	"github.com/tickstream/tickstream/internal/quote"
)

// BenchmarkBuildPatch measures assembling quotes_patch frames of 5 moved
// symbols from the shared fragments: 1,000 connections per tick, so the
// once-per-tick encoding is amortised as it is in the server.
func BenchmarkBuildPatch(b *testing.B) {
	store, err := quote.NewStore(quote.Builtin(), time.Now())
	if err != nil {
		b.Fatal(err)
	}
	h := hub.New(store)
	zero := func() float64 { return 0 }
	m := metrics.New(prometheus.NewRegistry(), metrics.Gauges{Subscriptions: zero, ActiveSymbols: zero, IdleConnections: zero})
	s := NewServer(Config{}, h, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), m)
	es := store.Entries()[:5]
	conns := make([]*conn, 1000)
	buf := make([]byte, 0, 4096)
	for i := range conns {
		conns[i] = &conn{srv: s, sub: h.NewSubscriber(func() {})}
		conns[i].sub.Subscribe(es)
		conns[i].buildPatch(buf) // the snapshot
	}
	t0 := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k, e := range es {
			e.Set(e.BasePrice+float64(k+i%7), t0.Add(time.Duration(i+1)*time.Millisecond))
		}
		h.Publish(es)
		for _, c := range conns {
			frame, ch := c.buildPatch(buf[:0])
			if ch.Ops != 5 || len(frame) == 0 {
				b.Fatalf("got %d ops", ch.Ops)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(conns)), "ns/message")
}
