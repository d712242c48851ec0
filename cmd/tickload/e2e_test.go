package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const e2eSecret = "tickload-e2e-secret-of-at-least-32-bytes"

// lockedBuffer collects a subprocess's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startTickstream builds ../tickstream and runs it on a free port with a
// 50ms tick that moves every subscribed symbol. It stops the server with
// SIGTERM at the end of the test and returns its address.
func startTickstream(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH: cannot build the server")
	}
	bin := filepath.Join(t.TempDir(), "tickstream")
	build := exec.Command(goBin, "build", "-o", bin, "../tickstream")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ../tickstream: %v\n%s", err, out)
	}
	addr := freeAddr(t)
	srv := exec.Command(bin)
	srv.Env = append(os.Environ(),
		"HTTP_ADDR="+addr,
		"JWT_SECRET="+e2eSecret,
		"PRICE_UPDATE_INTERVAL=50ms",
		"SIM_UPDATE=all",
		"LOG_LEVEL=warn",
		"WS_HANDSHAKE_RATE_PER_IP=0", // tickload opens 50 connections at once from one address
	)
	logs := &lockedBuffer{}
	srv.Stdout, srv.Stderr = logs, logs
	if err := srv.Start(); err != nil {
		t.Fatalf("start tickstream: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("tickstream exited with %v after SIGTERM\n%s", err, logs)
			}
		case <-time.After(20 * time.Second):
			srv.Process.Kill()
			<-exited
			t.Errorf("tickstream did not exit within 20s of SIGTERM\n%s", logs)
		}
	})
	waitHealthy(t, addr, exited, logs)
	return addr
}

// freeAddr returns a loopback address no one listens on, for the server.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitHealthy(t *testing.T, addr string, exited <-chan error, logs *lockedBuffer) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("tickstream exited before it was healthy: %v\n%s", err, logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("tickstream not healthy within 15s\n%s", logs)
}

// runLoad runs tickload with -json and the given flags and decodes the
// last line of its stdout.
func runLoad(t *testing.T, addr string, flags ...string) map[string]any {
	t.Helper()
	args := append([]string{"tickload", "-json", "-secret", e2eSecret, "-url", "ws://" + addr}, flags...)
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, args, func(string) string { return "" }, &stdout, &stderr); err != nil {
		t.Fatalf("run %v: %v\nstderr:\n%s", flags, err, &stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("last line of stdout %q: %v", lines[len(lines)-1], err)
	}
	t.Logf("tickload %v:\n%s\nstderr:\n%s", flags, lines[len(lines)-1], &stderr)
	return got
}

// num reads a number from the summary, failing the test when it is absent.
func num(t *testing.T, m map[string]any, path ...string) float64 {
	t.Helper()
	var v any = m
	for _, k := range path {
		obj, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("summary has no %s", strings.Join(path, "."))
		}
		v = obj[k]
	}
	f, ok := v.(float64)
	if !ok {
		t.Fatalf("summary %s: got %v, want a number", strings.Join(path, "."), v)
	}
	return f
}

// TestEndToEnd runs tickload against the real server, built from
// ../tickstream: every connection opens, every update is read, and every
// document matches the REST API at the end, also with slow readers and
// churn.
func TestEndToEnd(t *testing.T) {
	addr := startTickstream(t)

	t.Run("steady", func(t *testing.T) {
		got := runLoad(t, addr, "-conns", "50", "-rate", "500", "-duration", "2s", "-symbols-per-conn", "3", "-symbols-pool", "10")
		checks := []struct {
			name string
			ok   bool
		}{
			{"connected == 50", num(t, got, "connected") == 50},
			{"failed == 0", num(t, got, "failed") == 0},
			{"mismatches == 0", num(t, got, "mismatches") == 0},
			{"verified == 50", num(t, got, "verified") == 50},
			{"errors == 0", num(t, got, "errors") == 0},
			{"updates > 0", num(t, got, "updates") > 0},
			{"latency p50 > 0", num(t, got, "latency_ms", "p50") > 0},
			{"wire_bytes > 0", num(t, got, "wire_bytes") > 0},
		}
		for _, c := range checks {
			if !c.ok {
				t.Errorf("want %s, got %v", c.name, got)
			}
		}
	})

	t.Run("slow and churn", func(t *testing.T) {
		got := runLoad(t, addr, "-conns", "50", "-rate", "500", "-duration", "2s", "-symbols-per-conn", "3", "-symbols-pool", "10",
			"-slow", "5", "-churn", "20")
		if n := num(t, got, "mismatches"); n != 0 {
			t.Errorf("mismatches: got %v, want 0", n)
		}
		if n := num(t, got, "connected"); n < 50 {
			t.Errorf("connected: got %v, want at least 50", n)
		}
		if n := num(t, got, "churned"); n == 0 {
			t.Errorf("churned: got 0, want some")
		}
		if n := num(t, got, "errors"); n != 0 {
			t.Errorf("errors: got %v, want 0", n)
		}
	})
}

// TestNoServer checks that a server that cannot be reached is an error
// (exit status 1), not a run with zero connections.
func TestNoServer(t *testing.T) {
	addr := freeAddr(t)
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"tickload", "-secret", "s", "-url", "ws://" + addr, "-timeout", "2s"},
		func(string) string { return "" }, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "/v1/instruments") {
		t.Errorf("got %v, want an error about /v1/instruments", err)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		t.Errorf("got a usage error %v, want a start-up error", err)
	}
}
