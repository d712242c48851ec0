package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Result is one scenario run: the commands, what tickload saw and what the
// server cost.
type Result struct {
	Name      string             `json:"name"`
	When      time.Time          `json:"when"`
	ServerEnv []string           `json:"server_env"`
	Load      string             `json:"load_command"`
	Client    LoadResult         `json:"client"`
	Server    ServerStats        `json:"server"`
	Derived   map[string]float64 `json:"derived"`
}

// ServerStats is measured on the server process.
type ServerStats struct {
	PeakRSSMB      float64 `json:"peak_rss_mb"`
	CPUSeconds     float64 `json:"cpu_s"`
	Delivered      float64 `json:"updates_delivered"`
	Conflated      float64 `json:"updates_conflated"`
	SlowCloses     float64 `json:"slow_consumer_closes"`
	BytesSent      float64 `json:"bytes_sent"`
	GoroutinesPre  float64 `json:"goroutines_before,omitempty"`
	GoroutinesPost float64 `json:"goroutines_after,omitempty"`
	RSSPreMB       float64 `json:"rss_before_mb,omitempty"`
	RSSPostMB      float64 `json:"rss_after_mb,omitempty"`
	HeapPreMB      float64 `json:"heap_inuse_before_mb,omitempty"`
	HeapPostMB     float64 `json:"heap_inuse_after_mb,omitempty"`
}

func (r Result) Summary() string {
	c := r.Client
	return fmt.Sprintf("%-14s connected %d failed %d mismatches %d errors %d | p50 %.1f p99 %.1f max %.1f ms | %.0f upd/s | rss %.1f MB | cpu %.2f µs/upd",
		r.Name, c.Connected, c.Failed, c.Mismatches, c.Errors, c.LatencyMS.P50, c.LatencyMS.P99, c.LatencyMS.Max,
		c.UpdatesPerS, r.Server.PeakRSSMB, r.Derived["cpu_us_per_update"])
}

type scenario func(ctx context.Context, e *env) ([]Result, error)

var scenarios = map[string]scenario{
	"smoke": func(ctx context.Context, e *env) ([]Result, error) {
		r, err := e.measure(ctx, "smoke", fanoutEnv("100ms", "on"), false,
			"-conns", "300", "-rate", "300", "-symbols-per-conn", "5", "-symbols-pool", "50", "-duration", "10s", "-compress")
		return []Result{r}, err
	},
	"connect": func(ctx context.Context, e *env) ([]Result, error) {
		r, err := e.measure(ctx, "connect", map[string]string{"PRICE_UPDATE_INTERVAL": "4s"}, false,
			"-conns", "10000", "-rate", "1000", "-symbols-per-conn", "5", "-symbols-pool", "20", "-duration", "5s",
			"-source-ips", "127.0.0.1-127.0.0.4")
		return []Result{r}, err
	},
	"fanout": func(ctx context.Context, e *env) ([]Result, error) {
		var out []Result
		for _, comp := range []string{"off", "on"} {
			args := []string{"-conns", "10000", "-rate", "2000", "-symbols-per-conn", "5", "-symbols-pool", "50",
				"-duration", "60s", "-check-wait", "20s", "-source-ips", "127.0.0.1-127.0.0.4"}
			if comp == "on" {
				args = append(args, "-compress")
			}
			r, err := e.measure(ctx, "fanout-compress-"+comp, fanoutEnv("100ms", comp), false, args...)
			if err != nil {
				return out, err
			}
			out = append(out, r)
		}
		return out, nil
	},
	"slow": func(ctx context.Context, e *env) ([]Result, error) {
		r, err := e.measure(ctx, "slow", fanoutEnv("100ms", "off"), false,
			"-conns", "10000", "-rate", "2000", "-symbols-per-conn", "5", "-symbols-pool", "50",
			"-duration", "60s", "-check-wait", "20s", "-slow", "100", "-source-ips", "127.0.0.1-127.0.0.4")
		return []Result{r}, err
	},
	"churn": func(ctx context.Context, e *env) ([]Result, error) {
		vars := fanoutEnv("100ms", "off")
		debug, err := freePort() // the profiler forces a GC before the heap is read
		if err != nil {
			return nil, err
		}
		vars["DEBUG_ADDR"] = debug
		r, err := e.measure(ctx, "churn", vars, true,
			"-conns", "5000", "-rate", "2000", "-symbols-per-conn", "5", "-symbols-pool", "50",
			"-duration", "60s", "-check-wait", "20s", "-churn", "1000", "-source-ips", "127.0.0.1-127.0.0.8")
		return []Result{r}, err
	},
	"knee":               knee,
	"cluster":            clusterScenario,
	"cluster-slow-ticks": clusterSlowTicks,
}

func fanoutEnv(interval, compression string) map[string]string {
	return map[string]string{
		"SYNTHETIC_SYMBOLS": "30", "SIM_UPDATE": "all", "PRICE_UPDATE_INTERVAL": interval, "WS_COMPRESSION": compression,
	}
}

// knee raises the tick rate until p99 passes 100 ms; the last step under
// it is the highest sustainable rate. It runs 2,000 connections: at 10,000
// every tick is a burst of 10,000 messages, which one core on each side
// needs more than 100 ms to write and to read, whatever the tick rate
// (see the fanout rows).
func knee(ctx context.Context, e *env) ([]Result, error) {
	var out []Result
	for _, iv := range []string{"500ms", "250ms", "100ms", "50ms", "25ms", "10ms"} {
		r, err := e.measure(ctx, "knee-2000conns-"+iv, fanoutEnv(iv, "off"), false,
			"-conns", "2000", "-rate", "2000", "-symbols-per-conn", "5", "-symbols-pool", "50",
			"-duration", "20s", "-check-wait", "20s", "-source-ips", "127.0.0.1-127.0.0.4")
		if err != nil {
			return out, err
		}
		out = append(out, r)
		if r.Client.LatencyMS.P99 > 100 {
			break
		}
	}
	return out, nil
}

// measure runs one load against a fresh server and gathers the figures.
// With probe it also records goroutines and memory before the load and
// after it has left.
func (e *env) measure(ctx context.Context, name string, vars map[string]string, probe bool, args ...string) (Result, error) {
	s, err := e.startServer(ctx, vars)
	if err != nil {
		return Result{}, err
	}
	defer s.shutdown()
	r := Result{Name: name, When: time.Now().UTC(), ServerEnv: s.env, Derived: map[string]float64{}}
	if probe {
		time.Sleep(time.Second)
		s.collectGarbage()
		r.Server.GoroutinesPre = s.metric("go_goroutines")
		r.Server.HeapPreMB = s.metric("go_memstats_heap_inuse_bytes") / (1 << 20)
		rss, _ := s.rss()
		r.Server.RSSPreMB = mb(rss)
	}
	cpu0, _ := s.cpu()
	r.Client, r.Load, err = e.load(ctx, s, args...)
	if err != nil {
		return r, err
	}
	cpu1, _ := s.cpu()
	r.Server.PeakRSSMB = mb(s.peakRSS())
	r.Server.CPUSeconds = (cpu1 - cpu0).Seconds()
	r.Server.Delivered = s.metric("tickstream_symbol_updates_delivered_total")
	r.Server.Conflated = s.metric("tickstream_conflated_updates_total")
	r.Server.SlowCloses = s.metric("tickstream_slow_consumer_closes_total")
	r.Server.BytesSent = s.metric("tickstream_bytes_sent_total")
	if probe {
		// The load has closed its connections; give the garbage collector
		// and the scavenger time to return what they held.
		time.Sleep(20 * time.Second)
		s.collectGarbage()
		r.Server.GoroutinesPost = s.metric("go_goroutines")
		r.Server.HeapPostMB = s.metric("go_memstats_heap_inuse_bytes") / (1 << 20)
		rss, _ := s.rss()
		r.Server.RSSPostMB = mb(rss)
	}
	if r.Server.Delivered > 0 {
		r.Derived["cpu_us_per_update"] = r.Server.CPUSeconds * 1e6 / r.Server.Delivered
		r.Derived["wire_bytes_per_update"] = r.Server.BytesSent / r.Server.Delivered
	}
	if base, err := wholeQuoteBytes(s); err == nil {
		r.Derived["whole_quote_bytes_per_update"] = base
		if v := r.Derived["wire_bytes_per_update"]; v > 0 {
			r.Derived["wire_vs_whole_quote"] = v / base
		}
	}
	return r, nil
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// wholeQuoteBytes is what one symbol update costs in the original
// service's encoding, which sent the whole quote every time: the mean
// length of {"op":"replace","path":"/quotes/SYM","value":{quote}} over the
// served quotes, plus a comma.
func wholeQuoteBytes(s *server) (float64, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.addr+"/v1/quotes", nil)
	tok, err := mintToken()
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body struct{ Quotes map[string]json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, err
	}
	total := 0
	for sym, q := range body.Quotes {
		path := "/quotes/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(sym)
		total += len(`{"op":"replace","path":"`+path+`","value":}`) + len(q) + 1
	}
	return float64(total) / float64(len(body.Quotes)), nil
}
