package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// freePorts returns n ports that were free a moment ago.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		out = append(out, p)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// TestBehindNginxInstanceKilled runs scripts/cluster (three instances and
// nginx, as deploy/nginx.conf says) and tickload -reconnect through nginx;
// one instance is killed mid-run. Its clients reconnect to the others and
// every document ends equal to /v1/quotes: zero mismatches.
func TestBehindNginxInstanceKilled(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Fatal("nginx is not installed: apt-get install nginx-light (.ci/run does)")
	}
	dir := t.TempDir()
	load := filepath.Join(dir, "tickload")
	if out, err := exec.Command("go", "build", "-o", load, "../tickload").CombinedOutput(); err != nil {
		t.Fatalf("build tickload: %v\n%s", err, out)
	}
	url := testRedisURL()
	ports := freePorts(t, 4)
	env := append(os.Environ(), "DIR="+dir, "PORT="+ports[0], "INSTANCE_PORTS="+strings.Join(ports[1:], " "),
		"REDIS_URL="+url, "REDIS_PREFIX="+redisPrefix(t, url), "JWT_SECRET="+testSecret,
		"PRICE_UPDATE_INTERVAL=100ms", "SIM_UPDATE=all", "LOG_LEVEL=info",
		"WS_HANDSHAKE_RATE_PER_IP=0") // 90 clients from one address, reconnecting at once
	cluster := func(cmd string) {
		c := exec.Command("bash", "../../scripts/cluster", cmd)
		c.Env = env
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("scripts/cluster %s: %v\n%s", cmd, err, out)
		}
	}
	t.Cleanup(func() { cluster("stop") })
	cluster("start")

	lg := exec.Command(load, "-url", "ws://127.0.0.1:"+ports[0], "-secret", testSecret, "-json", "-reconnect",
		"-conns", "90", "-rate", "300", "-symbols-per-conn", "3", "-symbols-pool", "10",
		"-duration", "12s", "-check-wait", "10s")
	var out, errOut bytes.Buffer
	lg.Stdout, lg.Stderr = &out, &errOut
	if err := lg.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // every connection is open and streaming
	pidText, err := os.ReadFile(filepath.Join(dir, "instance-2.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill instance 2: %v", err)
	}
	if err := lg.Wait(); err != nil {
		t.Fatalf("tickload: %v\n%s", err, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r struct {
		Connected    int `json:"connected"`
		Open         int `json:"open"`
		Reconnects   int `json:"reconnects"`
		Mismatches   int `json:"mismatches"`
		Inconclusive int `json:"inconclusive"`
		Verified     int `json:"verified"`
		Errors       int `json:"errors"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("tickload output %q: %v", out.String(), err)
	}
	t.Logf("tickload: %s", lines[len(lines)-1])
	if r.Reconnects == 0 {
		t.Error("reconnects: got 0, want the killed instance's clients to reconnect")
	}
	if r.Mismatches != 0 || r.Errors != 0 {
		t.Errorf("got %d mismatches and %d errors, want none\n%s", r.Mismatches, r.Errors, errOut.String())
	}
	if r.Verified != 90 {
		t.Errorf("verified connections: got %d, want all 90 (inconclusive %d)\n%s", r.Verified, r.Inconclusive, errOut.String())
	}
}
