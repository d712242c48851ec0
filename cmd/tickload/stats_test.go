package main

import (
	"testing"
	"time"
)

func TestPercentiles(t *testing.T) {
	h := newHistogram()
	for us := int64(1); us <= 10_000; us++ { // 1µs .. 10ms, uniform
		h.RecordValue(us)
	}
	got := percentiles(h)
	want := latencyMS{P50: 5, P95: 9.5, P99: 9.9, P999: 9.99, Max: 10}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"p50", got.P50, want.P50}, {"p95", got.P95, want.P95}, {"p99", got.P99, want.P99},
		{"p999", got.P999, want.P999}, {"max", got.Max, want.Max},
	} {
		// 3 significant digits: within 0.1%.
		if d := c.got - c.want; d < -c.want/1000 || d > c.want/1000 {
			t.Errorf("%s: got %vms, want %vms ±0.1%%", c.name, c.got, c.want)
		}
	}
}

func TestPercentilesEmpty(t *testing.T) {
	if got := percentiles(newHistogram()); got != (latencyMS{}) {
		t.Errorf("got %+v, want zeros", got)
	}
}

func TestShardRecord(t *testing.T) {
	st := newStats()
	sh := st.shard(3)
	sh.record(100, []int64{2000, -5, 90_000_000}, 1) // 2ms, clock skew, beyond the range
	sh.record(50, nil, 0)
	st.shard(4).record(10, []int64{1000}, 0)
	tot := st.sum(true)
	if tot.messages != 3 || tot.updates != 4 || tot.bytes != 160 || tot.errors != 1 || tot.negative != 1 {
		t.Errorf("got %+v, want 3 messages, 4 updates, 160 bytes, 1 error, 1 negative", tot)
	}
	if got := tot.latency.TotalCount(); got != 4 {
		t.Errorf("latency samples: got %d, want 4", got)
	}
	if got := ms(tot.latency.Max()); got < 59_000 {
		t.Errorf("max: got %vms, want the 60s ceiling", got)
	}
	if got := ms(tot.latency.Min()); got != 0.001 {
		t.Errorf("min: got %vms, want the 1µs floor", got)
	}
}

func TestRate(t *testing.T) {
	tests := []struct {
		n    int64
		secs float64
		want float64
	}{
		{100, 2, 50},
		{10, 3, 3.3},
		{5, 0, 0},
	}
	for _, tt := range tests {
		if got := rate(tt.n, secondsDuration(tt.secs)); got != tt.want {
			t.Errorf("rate(%d, %vs): got %v, want %v", tt.n, tt.secs, got, tt.want)
		}
	}
}

func secondsDuration(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
