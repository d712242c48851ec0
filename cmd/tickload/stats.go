package main

import (
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds, in microseconds: 1µs to 60s at 3 significant digits.
const (
	histMin     = 1
	histMax     = 60_000_000
	histSigFigs = 3
)

// shards spreads the per-message counters and latency histogram over
// several locks, so that thousands of reader goroutines do not queue on
// one mutex: each connection records into shard id%shards.
const shards = 32

// maxProblems is how many problem descriptions are kept for stderr.
const maxProblems = 10

func newHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMin, histMax, histSigFigs)
}

// shard is one slice of the message counters.
type shard struct {
	mu       sync.Mutex // guards the fields below
	latency  *hdrhistogram.Histogram
	messages int64
	updates  int64
	bytes    int64 // payload bytes, after decompression
	errors   int64 // protocol errors and seq gaps
	negative int64 // updates whose last_updated is after their arrival (clock skew)

	wire atomic.Int64 // bytes read from the sockets, added by countingConn

	_ [64]byte // keeps neighbouring shards' locks off one cache line
}

// record adds one message carrying updates with these latencies in
// microseconds (negative when the server's clock is ahead); errs is how
// many protocol errors it had.
func (s *shard) record(size int, latencies []int64, errs int) {
	s.mu.Lock()
	s.messages++
	s.bytes += int64(size)
	s.errors += int64(errs)
	s.updates += int64(len(latencies))
	for _, us := range latencies {
		if us < 0 {
			s.negative++
		}
		s.latency.RecordValue(min(max(us, histMin), histMax)) // in range: cannot fail
	}
	s.mu.Unlock()
}

// stats is everything a run counts. The connection counters are atomic;
// the rarer events sit under mu.
type stats struct {
	shards [shards]shard

	connected  atomic.Int64 // successful handshakes, reopened ones included
	failed     atomic.Int64 // handshakes or dials that failed
	reconnects atomic.Int64 // connections reopened after the server closed them
	churned    atomic.Int64 // connections closed by -churn
	open       atomic.Int64 // connections open now

	mu       sync.Mutex // guards the fields below
	connect  *hdrhistogram.Histogram
	closes   map[int]int64    // server-initiated closes by code; 1006 when no close frame came
	failures map[string]int64 // failed handshakes by HTTP status, or "dial", "timeout"
	problems []string         // the first maxProblems descriptions, for stderr
}

func newStats() *stats {
	s := &stats{connect: newHistogram(), closes: map[int]int64{}, failures: map[string]int64{}}
	for i := range s.shards {
		s.shards[i].latency = newHistogram()
	}
	return s
}

func (s *stats) shard(id int) *shard { return &s.shards[id%shards] }

func (s *stats) connectedIn(d time.Duration) {
	s.connected.Add(1)
	s.mu.Lock()
	s.connect.RecordValue(min(max(d.Microseconds(), histMin), histMax))
	s.mu.Unlock()
}

func (s *stats) failure(reason, detail string) {
	s.failed.Add(1)
	s.mu.Lock()
	s.failures[reason]++
	s.mu.Unlock()
	s.problem("%s", detail)
}

func (s *stats) closed(code int) {
	s.mu.Lock()
	s.closes[code]++
	s.mu.Unlock()
}

// problem keeps a description of something that went wrong, if fewer than
// maxProblems are kept.
func (s *stats) problem(format string, a ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.problems) < maxProblems {
		s.problems = append(s.problems, fmt.Sprintf(format, a...))
	}
}

// totals is a consistent-enough sum of the shards: each shard is read under
// its lock, one after the other.
type totals struct {
	messages, updates, bytes, wire, errors, negative int64
	latency                                          *hdrhistogram.Histogram // merged; nil unless asked for
}

func (s *stats) sum(withLatency bool) totals {
	var t totals
	if withLatency {
		t.latency = newHistogram()
	}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		t.messages += sh.messages
		t.updates += sh.updates
		t.bytes += sh.bytes
		t.errors += sh.errors
		t.negative += sh.negative
		if withLatency {
			t.latency.Merge(sh.latency)
		}
		sh.mu.Unlock()
		t.wire += sh.wire.Load()
	}
	return t
}

// latencyMS is a latency distribution in milliseconds.
type latencyMS struct {
	P50  float64 `json:"p50"`
	P95  float64 `json:"p95"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// percentiles reads a microsecond histogram; all zero when it is empty.
func percentiles(h *hdrhistogram.Histogram) latencyMS {
	if h.TotalCount() == 0 {
		return latencyMS{}
	}
	return latencyMS{
		P50:  ms(h.ValueAtQuantile(50)),
		P95:  ms(h.ValueAtQuantile(95)),
		P99:  ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)),
		Max:  ms(h.Max()),
	}
}

// ms converts microseconds to milliseconds, keeping the microseconds.
func ms(us int64) float64 { return float64(us) / 1000 }

// closesByCode turns the close counts into JSON-friendly string keys.
func (s *stats) closesByCode() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.closes))
	for code, n := range s.closes {
		out[strconv.Itoa(code)] = n
	}
	return out
}

func (s *stats) failuresByReason() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.failures))
	for r, n := range s.failures {
		out[r] = n
	}
	return out
}

func (s *stats) connectPercentiles() latencyMS {
	s.mu.Lock()
	defer s.mu.Unlock()
	return percentiles(s.connect)
}

func (s *stats) problemList() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.problems...)
}

// rate is n per second over d, rounded to a tenth.
func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return math.Round(float64(n)/d.Seconds()*10) / 10
}
