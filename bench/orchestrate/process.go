package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const benchSecret = "bench-secret-bench-secret-bench-secret!"

// env is what every scenario needs: the two binaries and how to pin them.
type env struct {
	serverBin, loadBin string
	pin                bool // taskset is available and there are two cores
	clkTck             float64
	log                io.Writer
}

func newEnv(ctx context.Context, dir string, log io.Writer) (*env, error) {
	e := &env{serverBin: filepath.Join(dir, "tickstream"), loadBin: filepath.Join(dir, "tickload"), clkTck: 100, log: log}
	for bin, pkg := range map[string]string{e.serverBin: "./cmd/tickstream", e.loadBin: "./cmd/tickload"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("build %s: %w", pkg, err)
		}
	}
	if _, err := exec.LookPath("taskset"); err == nil && runtime.NumCPU() >= 2 {
		e.pin = true
	}
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			e.clkTck = v
		}
	}
	return e, nil
}

func (e *env) command(ctx context.Context, cpu string, bin string, args ...string) *exec.Cmd {
	if e.pin {
		return exec.CommandContext(ctx, "taskset", append([]string{"-c", cpu, bin}, args...)...)
	}
	return exec.CommandContext(ctx, bin, args...)
}

// server is a running tickstream pinned to core 0.
type server struct {
	cmd      *exec.Cmd
	fixedPID int // a process started by someone else (scripts/cluster); cmd is nil
	addr     string
	debug    string // DEBUG_ADDR, when set
	env      []string
	clkTck   float64

	mu     sync.Mutex
	maxRSS int64 // bytes
	stop   chan struct{}
	done   chan struct{}
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startServer runs tickstream with vars on top of the benchmark defaults
// and waits until it answers /healthz.
func (e *env) startServer(ctx context.Context, vars map[string]string) (*server, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	kv := map[string]string{
		"HTTP_ADDR": addr, "JWT_SECRET": benchSecret, "LOG_LEVEL": "warn",
		"WS_MAX_CONNECTIONS": "20000", "SHUTDOWN_TIMEOUT": "20s",
		// The load generator opens thousands of connections a second
		// from a few loopback addresses.
		"WS_HANDSHAKE_RATE_PER_IP": "0",
	}
	for k, v := range vars {
		kv[k] = v
	}
	s := &server{addr: addr, debug: kv["DEBUG_ADDR"], clkTck: e.clkTck, stop: make(chan struct{}), done: make(chan struct{})}
	for k, v := range kv {
		if k != "JWT_SECRET" && k != "HTTP_ADDR" && k != "DEBUG_ADDR" {
			s.env = append(s.env, k+"="+v)
		}
	}
	slices.Sort(s.env)
	s.cmd = e.command(ctx, "0", e.serverBin)
	s.cmd.Env = os.Environ()
	for k, v := range kv {
		s.cmd.Env = append(s.cmd.Env, k+"="+v)
	}
	s.cmd.Stdout, s.cmd.Stderr = io.Discard, e.log
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			s.cmd.Process.Kill()
			return nil, fmt.Errorf("server did not start: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	go s.sample()
	return s, nil
}

// sample records the peak resident memory twice a second.
func (s *server) sample() {
	defer close(s.done)
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		if rss, err := s.rss(); err == nil {
			s.mu.Lock()
			s.maxRSS = max(s.maxRSS, rss)
			s.mu.Unlock()
		}
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// pid is the server's process id; taskset execs the program, so it is
// tickstream's own.
func (s *server) pid() int {
	if s.fixedPID != 0 {
		return s.fixedPID
	}
	if s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// rss returns the server's resident memory in bytes.
func (s *server) rss() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid()))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS")
}

// cpu returns the server's user+system CPU time so far.
func (s *server) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid()))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc stat")
	}
	return time.Duration((ut + st) / s.clkTck * float64(time.Second)), nil
}

func (s *server) peakRSS() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxRSS
}

// metric returns one sample of the server's /metrics by name (and label
// text, e.g. `tickstream_closes{code="4008"}`), 0 when absent.
func (s *server) metric(name string) float64 {
	resp, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return 0
}

// collectGarbage makes the server run a full GC (through the profiler's
// heap endpoint), so that heap figures count live memory only.
func (s *server) collectGarbage() {
	if s.debug == "" {
		return
	}
	resp, err := http.Get("http://" + s.debug + "/debug/pprof/heap?gc=1")
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// shutdown stops the server with SIGTERM and waits.
func (s *server) shutdown() {
	close(s.stop)
	<-s.done
	s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// LoadResult is tickload's -json line.
type LoadResult struct {
	Connected    int     `json:"connected"`
	Failed       int     `json:"failed"`
	Messages     int64   `json:"messages"`
	Updates      int64   `json:"updates"`
	Bytes        int64   `json:"bytes"`
	WireBytes    int64   `json:"wire_bytes"`
	Mismatches   int     `json:"mismatches"`
	Inconclusive int     `json:"inconclusive"`
	Errors       int     `json:"errors"`
	Reconnects   int     `json:"reconnects"`
	Open         int     `json:"open"`
	DurationS    float64 `json:"duration_s"`
	UpdatesPerS  float64 `json:"updates_per_s"`
	LatencyMS    struct {
		P50, P95, P99, Max float64
	} `json:"latency_ms"`
	ConnectMS struct {
		P50, P99 float64
	} `json:"connect_ms"`
	Closes map[string]int `json:"closes"`
}

// load runs tickload on core 1 against s and returns its result and the
// command line.
func (e *env) load(ctx context.Context, s *server, args ...string) (LoadResult, string, error) {
	full := append([]string{"-url", "ws://" + s.addr, "-secret", benchSecret, "-json"}, args...)
	cmd := e.command(ctx, "1", e.loadBin, full...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, e.log
	shown := "tickload " + strings.Join(append([]string{"-url", "ws://HOST", "-secret", "S", "-json"}, args...), " ")
	if err := cmd.Run(); err != nil {
		return LoadResult{}, shown, fmt.Errorf("tickload: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r LoadResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return r, shown, fmt.Errorf("tickload output: %w", err)
	}
	return r, shown, nil
}
