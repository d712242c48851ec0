package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// summary is the result of a run; with -json it is the last line of
// stdout. Message counts and rates cover the whole run up to the end of
// the load (the final check excluded); latency covers every update
// received until then.
type summary struct {
	URL            string           `json:"url"`
	Conns          int              `json:"conns"`            // -conns
	Connected      int64            `json:"connected"`        // successful handshakes, reopened connections included
	Failed         int64            `json:"failed"`           // failed handshakes and dials
	Failures       map[string]int64 `json:"failures"`         // failed by HTTP status, "timeout" or "dial"
	Open           int64            `json:"open"`             // connections open when the load ended
	Messages       int64            `json:"messages"`         // server messages received
	Updates        int64            `json:"updates"`          // symbol updates received (snapshots excluded)
	Bytes          int64            `json:"bytes"`            // payload bytes, after decompression
	WireBytes      int64            `json:"wire_bytes"`       // bytes read from the sockets
	Latency        latencyMS        `json:"latency_ms"`       // arrival - last_updated per update
	Connect        latencyMS        `json:"connect_ms"`       // dial + handshake
	Mismatches     int              `json:"mismatches"`       // connections whose document differed from REST
	Verified       int              `json:"verified"`         // connections whose document matched REST
	Unverified     int              `json:"unverified"`       // open connections that closed during the check
	Inconclusive   int              `json:"inconclusive"`     // matched no REST answer, contradicted by none: REST sampled too sparsely
	Errors         int64            `json:"errors"`           // protocol errors and seq gaps
	Closes         map[string]int64 `json:"closes"`           // server-initiated closes by code (1006: no close frame)
	Reconnects     int64            `json:"reconnects"`       // connections reopened after the server closed them
	Churned        int64            `json:"churned"`          // connections closed by -churn
	NegLatency     int64            `json:"negative_latency"` // updates stamped after their arrival: clock skew
	DurationS      float64          `json:"duration_s"`       // from the last connection opened to the end of the load
	ElapsedS       float64          `json:"elapsed_s"`        // from the first dial to the end of the load
	UpdatesPerS    float64          `json:"updates_per_s"`    // over duration_s
	MessagesPerS   float64          `json:"messages_per_s"`   // over duration_s
	WireBytesPerS  float64          `json:"wire_bytes_per_s"` // over duration_s
	CPUPercent     float64          `json:"cpu_percent"`      // tickload's own CPU over elapsed_s; 100 is one core
	CheckError     string           `json:"check_error,omitempty"`
	SymbolsPool    int              `json:"symbols_pool"`     // after capping at the instruments served
	SymbolsPerConn int              `json:"symbols_per_conn"` // -symbols-per-conn
}

func writeJSON(w io.Writer, s summary) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode summary: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func writeText(w io.Writer, s summary) error {
	var b strings.Builder
	fmt.Fprintf(&b, "tickload: %d connections to %s, %d symbols each from a pool of %d, %.1fs after the last opened\n",
		s.Conns, s.URL, s.SymbolsPerConn, s.SymbolsPool, s.DurationS)
	fmt.Fprintf(&b, "  connections  connected %d  failed %d%s  open %d  reconnects %d  churned %d\n",
		s.Connected, s.Failed, counts(s.Failures), s.Open, s.Reconnects, s.Churned)
	fmt.Fprintf(&b, "  connect      p50 %.3fms  p99 %.3fms  max %.3fms\n", s.Connect.P50, s.Connect.P99, s.Connect.Max)
	fmt.Fprintf(&b, "  received     %d messages  %d updates  %s payload  %s on the wire\n",
		s.Messages, s.Updates, size(s.Bytes), size(s.WireBytes))
	fmt.Fprintf(&b, "  rate         %.0f messages/s  %.0f updates/s  %s/s on the wire\n",
		s.MessagesPerS, s.UpdatesPerS, size(int64(s.WireBytesPerS)))
	fmt.Fprintf(&b, "  latency      p50 %.3fms  p95 %.3fms  p99 %.3fms  p99.9 %.3fms  max %.3fms\n",
		s.Latency.P50, s.Latency.P95, s.Latency.P99, s.Latency.P999, s.Latency.Max)
	if s.NegLatency > 0 {
		fmt.Fprintf(&b, "               %d updates stamped after they arrived: the clocks differ\n", s.NegLatency)
	}
	fmt.Fprintf(&b, "  check        %d verified  %d mismatches  %d inconclusive  %d closed during the check\n", s.Verified, s.Mismatches, s.Inconclusive, s.Unverified)
	if s.CheckError != "" {
		fmt.Fprintf(&b, "               stopped: %s\n", s.CheckError)
	}
	fmt.Fprintf(&b, "  errors       %d\n", s.Errors)
	fmt.Fprintf(&b, "  tickload CPU %.0f%%\n", s.CPUPercent)
	closes := "none"
	if len(s.Closes) > 0 {
		closes = "by code " + list(s.Closes)
	}
	fmt.Fprintf(&b, "  server closes %s\n", closes)
	_, err := io.WriteString(w, b.String())
	return err
}

// counts formats {"503": 2} as " (503: 2)", or "" when empty.
func counts(m map[string]int64) string {
	if len(m) == 0 {
		return ""
	}
	return " (" + list(m) + ")"
}

// list formats {"503": 2, "dial": 1} as "503: 2, dial: 1".
func list(m map[string]int64) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// progress writes a line to w every second until ctx ends: connections,
// message and update rates over the last second, and p99 latency so far.
func progress(ctx context.Context, w io.Writer, st *stats, conns int) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start, last, lastAt := time.Now(), st.sum(false), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			t := st.sum(true)
			d := now.Sub(lastAt)
			fmt.Fprintf(w, "%5.0fs  connected %d/%d  open %d  failed %d  msgs/s %.0f  updates/s %.0f  p99 %.3fms  errors %d\n",
				now.Sub(start).Seconds(), st.connected.Load(), conns, st.open.Load(), st.failed.Load(),
				rate(t.messages-last.messages, d), rate(t.updates-last.updates, d),
				ms(t.latency.ValueAtQuantile(99)), t.errors)
			last, lastAt = t, now
		}
	}
}
