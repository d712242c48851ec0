package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clusterLoads is how many tickload processes share the cluster scenario's
// connections: one process may hold at most 20,000 descriptors here.
const clusterLoads = 3

// clusterScenario runs three instances with BROKER=redis behind nginx
// (scripts/cluster) and three tickload processes of 15,000 connections
// each with the fanout load: 5 of 50 symbols, 100 ms ticks. It records
// each instance's peak RSS and CPU and Redis's CPU. Nothing is pinned:
// eight processes share the two cores.
func clusterScenario(ctx context.Context, e *env) ([]Result, error) {
	r, err := clusterRun(ctx, e, "cluster-3x15000", "100ms")
	return []Result{r}, err
}

// clusterSlowTicks is the cluster scenario at one tick a second: what the
// three instances hold when the machine is not saturated by the 100 ms
// fan-out (2.25 million symbol updates/s offered in 450,000 messages).
func clusterSlowTicks(ctx context.Context, e *env) ([]Result, error) {
	r, err := clusterRun(ctx, e, "cluster-3x15000-1s", "1s")
	return []Result{r}, err
}

// clusterRun runs the cluster load at interval; extra are more tickload
// flags.
func clusterRun(ctx context.Context, e *env, name, interval string, extra ...string) (Result, error) {
	vars := fanoutEnv(interval, "off")
	// A client more than one ping interval behind (30 s by default) is
	// closed with 1008 for a missing pong; on this saturated machine
	// tickload's readers fall that far behind, and the closes turn into a
	// reconnection storm that measures handshakes, not fan-out.
	vars["WS_HEALTH_CHECK_INTERVAL"] = "10m"
	c, err := startCluster(ctx, e, vars)
	if err != nil {
		return Result{}, err
	}
	defer c.stop()
	r := Result{Name: name, When: time.Now().UTC(), ServerEnv: c.shownEnv, Derived: map[string]float64{}}
	redis0, err := redisCPU(c.redisURL)
	if err != nil {
		return r, err
	}
	cpu0 := c.cpu()
	start := time.Now()
	args := []string{"-conns", "15000", "-rate", "750", "-symbols-per-conn", "5", "-symbols-pool", "50",
		"-duration", "30s", "-check-wait", "30s", "-timeout", "30s"}
	loads, shown, err := c.loads(ctx, e, append(args, extra...)...)
	if err != nil {
		return r, err
	}
	wall := time.Since(start)
	cpu1 := c.cpu()
	redis1, _ := redisCPU(c.redisURL)
	r.Load = shown
	r.Client = mergeLoads(loads)
	for i, s := range c.instances {
		rss := mb(s.peakRSS())
		r.Derived[fmt.Sprintf("instance%d_peak_rss_mb", i+1)] = rss
		r.Server.PeakRSSMB = max(r.Server.PeakRSSMB, rss)
		r.Server.Delivered += s.metric("tickstream_symbol_updates_delivered_total")
		r.Server.Conflated += s.metric("tickstream_conflated_updates_total")
		r.Server.SlowCloses += s.metric("tickstream_slow_consumer_closes_total")
		r.Server.BytesSent += s.metric("tickstream_bytes_sent_total")
	}
	r.Server.CPUSeconds = (cpu1 - cpu0).Seconds()
	r.Derived["instances"] = float64(len(c.instances))
	r.Derived["redis_cpu_s"] = redis1 - redis0
	r.Derived["redis_cpu_percent"] = (redis1 - redis0) / wall.Seconds() * 100
	for i, l := range loads {
		r.Derived[fmt.Sprintf("load%d_p99_ms", i+1)] = l.LatencyMS.P99
	}
	if r.Server.Delivered > 0 {
		r.Derived["cpu_us_per_update"] = r.Server.CPUSeconds * 1e6 / r.Server.Delivered
		r.Derived["wire_bytes_per_update"] = r.Server.BytesSent / r.Server.Delivered
	}
	if base, err := wholeQuoteBytes(c.instances[0]); err == nil {
		r.Derived["whole_quote_bytes_per_update"] = base
	}
	return r, nil
}

// localCluster is scripts/cluster's processes.
type localCluster struct {
	dir, port, redisURL string
	prefix              string // REDIS_PREFIX, deleted at the end
	env, shownEnv       []string
	instances           []*server // pid-only: cmd is not ours, see pid()
}

func startCluster(ctx context.Context, e *env, vars map[string]string) (*localCluster, error) {
	dir, err := os.MkdirTemp("", "tickcluster")
	if err != nil {
		return nil, err
	}
	var ports []string
	for range 4 {
		a, err := freePort()
		if err != nil {
			return nil, err
		}
		ports = append(ports, a[strings.LastIndexByte(a, ':')+1:])
	}
	c := &localCluster{dir: dir, port: ports[0], redisURL: "redis://127.0.0.1:6379"}
	c.prefix = fmt.Sprintf("bench-%d:", time.Now().UnixNano())
	kv := map[string]string{
		"LOG_LEVEL": "warn", "WS_MAX_CONNECTIONS": "20000", "SHUTDOWN_TIMEOUT": "20s",
		"WS_HANDSHAKE_RATE_PER_IP": "0", // thousands of connections a second from six addresses
		"REDIS_PREFIX":             c.prefix,
	}
	for k, v := range vars {
		kv[k] = v
	}
	for k, v := range kv {
		c.shownEnv = append(c.shownEnv, k+"="+v)
	}
	slices.Sort(c.shownEnv)
	c.shownEnv = append(c.shownEnv, "BROKER=redis", "(3 instances, scripts/cluster, deploy/nginx.conf)")
	c.env = append(os.Environ(), c.shownEnv[:len(c.shownEnv)-2]...)
	c.env = append(c.env, "DIR="+dir, "PORT="+ports[0], "INSTANCE_PORTS="+strings.Join(ports[1:], " "),
		"REDIS_URL="+c.redisURL, "JWT_SECRET="+benchSecret)
	if err := c.script(ctx, e, "start"); err != nil {
		return nil, err
	}
	for i, p := range ports[1:] {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("instance-%d.pid", i+1)))
		if err != nil {
			c.stop()
			return nil, err
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		s := &server{addr: "127.0.0.1:" + p, clkTck: e.clkTck, stop: make(chan struct{}), done: make(chan struct{}), fixedPID: pid}
		go s.sample()
		c.instances = append(c.instances, s)
	}
	return c, nil
}

func (c *localCluster) script(ctx context.Context, e *env, cmd string) error {
	sc := exec.CommandContext(ctx, "bash", "scripts/cluster", cmd)
	sc.Env, sc.Stdout, sc.Stderr = c.env, e.log, e.log
	if err := sc.Run(); err != nil {
		return fmt.Errorf("scripts/cluster %s: %w", cmd, err)
	}
	return nil
}

func (c *localCluster) stop() {
	for _, s := range c.instances {
		close(s.stop)
		<-s.done
	}
	sc := exec.Command("bash", "scripts/cluster", "stop")
	sc.Env = c.env
	sc.Run()
	os.RemoveAll(c.dir)
	// The market's keys: a few per symbol, gone with the run.
	del := exec.Command("sh", "-c", `redis-cli -u "$1" --scan --pattern "$2*" | xargs -r redis-cli -u "$1" del >/dev/null`, "sh", c.redisURL, c.prefix)
	del.Run()
}

// cpu is the instances' CPU time so far, together.
func (c *localCluster) cpu() time.Duration {
	var total time.Duration
	for _, s := range c.instances {
		d, _ := s.cpu()
		total += d
	}
	return total
}

// loads runs clusterLoads tickload processes at once through nginx, each
// from its own pair of source addresses.
func (c *localCluster) loads(ctx context.Context, e *env, args ...string) ([]LoadResult, string, error) {
	out := make([]LoadResult, clusterLoads)
	errs := make([]error, clusterLoads)
	var wg sync.WaitGroup
	for i := range clusterLoads {
		ips := fmt.Sprintf("127.0.0.%d-127.0.0.%d", 2+2*i, 3+2*i)
		full := append([]string{"-url", "ws://127.0.0.1:" + c.port, "-secret", benchSecret, "-json", "-source-ips", ips}, args...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.CommandContext(ctx, e.loadBin, full...)
			var buf strings.Builder
			cmd.Stdout, cmd.Stderr = &buf, e.log
			if errs[i] = cmd.Run(); errs[i] != nil {
				return
			}
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			errs[i] = json.Unmarshal([]byte(lines[len(lines)-1]), &out[i])
		}()
	}
	wg.Wait()
	shown := fmt.Sprintf("%d × tickload %s", clusterLoads, strings.Join(append([]string{"-url", "ws://NGINX", "-secret", "S", "-json", "-source-ips", "127.0.0.{2k+2}-127.0.0.{2k+3}"}, args...), " "))
	return out, shown, errors.Join(errs...)
}

// mergeLoads adds the processes' counts and rates; latencies are the
// worst process's (a percentile of the union is not the mean of
// percentiles, and the worst is what some clients saw).
func mergeLoads(ls []LoadResult) LoadResult {
	var m LoadResult
	m.Closes = map[string]int{}
	for _, l := range ls {
		m.Connected += l.Connected
		m.Failed += l.Failed
		m.Messages += l.Messages
		m.Updates += l.Updates
		m.Bytes += l.Bytes
		m.WireBytes += l.WireBytes
		m.Mismatches += l.Mismatches
		m.Inconclusive += l.Inconclusive
		m.Errors += l.Errors
		m.Reconnects += l.Reconnects
		m.Open += l.Open
		m.UpdatesPerS += l.UpdatesPerS
		m.DurationS = max(m.DurationS, l.DurationS)
		m.LatencyMS.P50 = max(m.LatencyMS.P50, l.LatencyMS.P50)
		m.LatencyMS.P95 = max(m.LatencyMS.P95, l.LatencyMS.P95)
		m.LatencyMS.P99 = max(m.LatencyMS.P99, l.LatencyMS.P99)
		m.LatencyMS.Max = max(m.LatencyMS.Max, l.LatencyMS.Max)
		m.ConnectMS.P50 = max(m.ConnectMS.P50, l.ConnectMS.P50)
		m.ConnectMS.P99 = max(m.ConnectMS.P99, l.ConnectMS.P99)
		for k, v := range l.Closes {
			m.Closes[k] += v
		}
	}
	return m
}

// redisCPU is redis-server's user+system CPU seconds (INFO cpu).
func redisCPU(url string) (float64, error) {
	out, err := exec.Command("redis-cli", "-u", url, "info", "cpu").Output()
	if err != nil {
		return 0, fmt.Errorf("redis-cli info cpu: %w", err)
	}
	var total float64
	for line := range strings.SplitSeq(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return total, nil
}
