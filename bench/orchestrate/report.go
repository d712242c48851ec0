package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func mintToken() (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "bench", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(benchSecret))
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func readResults(dir string) ([]Result, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Result
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var r Result
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if r.Name != "smoke" {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b Result) int {
		if c := strings.Compare(sortKey(a.Name), sortKey(b.Name)); c != 0 {
			return c
		}
		return a.When.Compare(b.When)
	})
	return out, nil
}

// sortKey orders results by scenario; runs of one scenario then go by time.
func sortKey(name string) string {
	base, _, _ := strings.Cut(name, "-")
	if base == "fanout" || base == "cluster" {
		return fmt.Sprintf("%d-%s", order[base], name)
	}
	return fmt.Sprint(order[base])
}

// checkSmoke fails the CI smoke run on anything but a clean run.
func checkSmoke(r Result) error {
	c := r.Client
	if c.Connected < 300 || c.Failed != 0 || c.Mismatches != 0 || c.Inconclusive != 0 || c.Errors != 0 || c.Updates == 0 {
		return fmt.Errorf("smoke: connected %d (want 300), failed %d, mismatches %d, inconclusive %d, errors %d, updates %d",
			c.Connected, c.Failed, c.Mismatches, c.Inconclusive, c.Errors, c.Updates)
	}
	fmt.Printf("smoke ok: %d connections, %d updates, 0 mismatches\n", c.Connected, c.Updates)
	return nil
}

const beginMark, endMark = "<!-- bench:begin -->", "<!-- bench:end -->"

// updateDoc rewrites the table between the markers of path.
func updateDoc(path string, rs []Result) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("results table: %w", err)
	}
	i, j := bytes.Index(b, []byte(beginMark)), bytes.Index(b, []byte(endMark))
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s ... %s section", path, beginMark, endMark)
	}
	var t strings.Builder
	t.WriteString(beginMark + "\n")
	t.WriteString("| scenario | conns ok / failed | mismatches (inconclusive) | latency p50 / p95 / p99 / max ms | connect p50 / p99 ms | updates/s | server peak RSS MB | server CPU µs/update | wire bytes/update (whole-quote) | notes |\n")
	t.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		c, d := r.Client, r.Derived
		note := ""
		if r.Server.GoroutinesPost > 0 {
			note = fmt.Sprintf("before → 20 s after: goroutines %.0f → %.0f, heap in use %.1f → %.1f MB, RSS %.1f → %.1f MB",
				r.Server.GoroutinesPre, r.Server.GoroutinesPost, r.Server.HeapPreMB, r.Server.HeapPostMB, r.Server.RSSPreMB, r.Server.RSSPostMB)
		}
		if n := d["instances"]; n > 0 {
			var rss []string
			for i := 1; i <= int(n); i++ {
				rss = append(rss, fmt.Sprintf("%.1f", d[fmt.Sprintf("instance%d_peak_rss_mb", i)]))
			}
			note = fmt.Sprintf("%.0f instances behind nginx; peak RSS per instance %s MB; Redis CPU %.1f%% of a core; latency and connect: worst of %d tickload processes",
				n, strings.Join(rss, " / "), d["redis_cpu_percent"], clusterLoads)
		}
		if r.Server.SlowCloses > 0 || r.Server.Conflated > 0 {
			note = strings.TrimPrefix(note+fmt.Sprintf("; conflated %.0f, 4008 closes %.0f", r.Server.Conflated, r.Server.SlowCloses), "; ")
		}
		fmt.Fprintf(&t, "| %s | %d / %d | %d (%d) | %.1f / %.1f / %.1f / %.1f | %.1f / %.1f | %.0f | %.1f | %.2f | %.1f (%.0f) | %s |\n",
			r.Name, c.Connected, c.Failed, c.Mismatches, c.Inconclusive, c.LatencyMS.P50, c.LatencyMS.P95, c.LatencyMS.P99, c.LatencyMS.Max,
			c.ConnectMS.P50, c.ConnectMS.P99, c.UpdatesPerS, r.Server.PeakRSSMB, d["cpu_us_per_update"],
			d["wire_bytes_per_update"], d["whole_quote_bytes_per_update"], note)
	}
	t.WriteString("\nCommands (server env, then load):\n\n")
	for _, r := range rs {
		fmt.Fprintf(&t, "- %s: `%s` · `%s` (%s)\n", r.Name, strings.Join(r.ServerEnv, " "), r.Load, r.When.Format(time.DateTime))
	}
	t.WriteString(endMark)
	out := append(append(append([]byte{}, b[:i]...), t.String()...), b[j+len(endMark):]...)
	return os.WriteFile(path, out, 0o644)
}
