package main

import (
	"encoding/json"
	"fmt"
	"io"
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

// buildServer compiles tickstream into a temporary directory, for tests
// that need real processes (SIGKILL).
func buildServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tickstream")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is a tickstream process.
type proc struct {
	cmd  *exec.Cmd
	addr string
	logs *syncBuffer
	done chan struct{}
}

// startProc runs bin with vars on top of the test defaults and waits for
// its "listening" line. The process is killed at the end of the test.
func startProc(t *testing.T, bin string, vars map[string]string) *proc {
	t.Helper()
	env := append(os.Environ(), "HTTP_ADDR=127.0.0.1:0", "JWT_SECRET="+testSecret, "LOG_LEVEL=info", "SHUTDOWN_TIMEOUT=2s")
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	p := &proc{cmd: exec.Command(bin), logs: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = env, io.Discard, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	if !eventually(10*time.Second, func() bool { p.addr = listeningAddr(p.logs.String()); return p.addr != "" }) {
		t.Fatalf("tickstream did not listen within 10s:\n%s", p.logs)
	}
	return p
}

func listeningAddr(logs string) string {
	for line := range strings.SplitSeq(logs, "\n") {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" {
			return rec.Addr
		}
	}
	return ""
}

// leaderWatch polls tickstream_feed_leader on every live instance until
// stopped and counts the polls that found more than one leader.
type leaderWatch struct {
	mu    sync.Mutex
	addrs map[string]bool // live instances
	both  []string        // polls with two leaders, described
	stop  chan struct{}
	done  chan struct{}
}

func watchLeaders(addrs []string) *leaderWatch {
	w := &leaderWatch{addrs: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, a := range addrs {
		w.addrs[a] = true
	}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if l := w.leaders(); len(l) > 1 {
				w.mu.Lock()
				w.both = append(w.both, fmt.Sprintf("%s at %s", l, time.Now().Format(time.StampMilli)))
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// leaders returns the live instances that report leading now.
func (w *leaderWatch) leaders() []string {
	w.mu.Lock()
	var live []string
	for a := range w.addrs {
		live = append(live, a)
	}
	w.mu.Unlock()
	var out []string
	for _, a := range live {
		if v, ok := metricOf(a, "tickstream_feed_leader"); ok && v == 1 {
			out = append(out, a)
		}
	}
	return out
}

func (w *leaderWatch) forget(addr string) {
	w.mu.Lock()
	delete(w.addrs, addr)
	w.mu.Unlock()
}

func (w *leaderWatch) finish(t *testing.T) {
	t.Helper()
	close(w.stop)
	<-w.done
	for _, b := range w.both {
		t.Errorf("two leaders at once: %s", b)
	}
}

// TestLeaderKilled: SIGKILL the instance that publishes; another takes
// over within 5 s, prices keep flowing to the survivors' clients, and there
// are never two leaders at once.
func TestLeaderKilled(t *testing.T) {
	bin := buildServer(t)
	url := testRedisURL()
	vars := redisVars(url, redisPrefix(t, url))
	var procs []*proc
	var addrs []string
	recs := map[string]*recorder{}
	for range 3 {
		p := startProc(t, bin, vars)
		procs, addrs = append(procs, p), append(addrs, p.addr)
		recs[p.addr] = record(t, p.addr, clusterSymbols)
	}
	w := watchLeaders(addrs)
	var leader string
	if !eventually(10*time.Second, func() bool {
		l := w.leaders()
		if len(l) == 1 {
			leader = l[0]
		}
		return len(l) == 1
	}) {
		t.Fatal("no single leader within 10s")
	}
	time.Sleep(time.Second)

	var survivors []string
	for _, p := range procs {
		if p.addr == leader {
			w.forget(p.addr)
			if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-p.done
		} else {
			survivors = append(survivors, p.addr)
		}
	}
	killed := time.Now()
	var next string
	if !eventually(10*time.Second, func() bool {
		if l := w.leaders(); len(l) == 1 {
			next = l[0]
		}
		return next != ""
	}) {
		t.Fatal("no instance took over within 10s of the leader's death")
	}
	if took := time.Since(killed); took > 5*time.Second {
		t.Errorf("takeover took %v, want at most 5s", took.Round(time.Millisecond))
	}
	t.Logf("%s took over from %s after %v", next, leader, time.Since(killed).Round(time.Millisecond))

	// Prices keep flowing: each survivor's client gets quotes computed
	// after the takeover, and the survivors' clients agree.
	after := time.Now()
	for _, a := range survivors {
		if !eventually(10*time.Second, func() bool { return len(recs[a].history(after)) >= 5 }) {
			t.Errorf("client of survivor %s got no new prices within 10s of the takeover", a)
		}
	}
	time.Sleep(time.Second)
	w.finish(t)
	if n := agree(t, []*recorder{recs[survivors[0]], recs[survivors[1]]}, after); n == 0 {
		t.Error("the survivors' clients held no quote version in common")
	}
	for _, a := range survivors {
		if _, err := recs[a].state(); err != nil {
			t.Errorf("client of survivor %s: %v", a, err)
		}
	}
}

// ownRedis is a redis-server the test starts, stops and restarts.
type ownRedis struct {
	t    *testing.T
	port string
	cmd  *exec.Cmd
	done chan struct{}
}

func startOwnRedis(t *testing.T) *ownRedis {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	r := &ownRedis{t: t, port: port}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *ownRedis) url() string { return "redis://127.0.0.1:" + r.port }

func (r *ownRedis) start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", r.port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, io.Discard
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("redis-server: %v", err)
	}
	r.done = make(chan struct{})
	done := r.done
	go func() { r.cmd.Wait(); close(done) }()
	if !eventually(5*time.Second, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+r.port)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		r.t.Fatal("redis-server did not listen within 5s")
	}
}

func (r *ownRedis) kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		<-r.done
	}
}

// readyz returns the body of addr's /readyz and its status.
func readyz(addr string) (int, string) {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRedisRestart: Redis goes away and comes back empty. No client is
// disconnected, the instances say they are degraded and keep serving,
// and once Redis is back every client converges on one market again.
func TestRedisRestart(t *testing.T) {
	rs := startOwnRedis(t)
	vars := redisVars(rs.url(), "tickstream:")
	var addrs []string
	var recs []*recorder
	for range 3 {
		s := startServer(t, vars)
		addrs = append(addrs, s.addr)
		recs = append(recs, record(t, s.addr, clusterSymbols))
	}
	time.Sleep(time.Second)

	rs.kill()
	allUp := func(want float64) func() bool {
		return func() bool {
			for _, a := range addrs {
				if v, _ := metricOf(a, "tickstream_broker_up"); v != want {
					return false
				}
			}
			return true
		}
	}
	if !eventually(10*time.Second, allUp(0)) {
		t.Fatal("tickstream_broker_up still 1 somewhere 10s after Redis died")
	}
	for _, a := range addrs {
		if code, body := readyz(a); code != http.StatusOK || !strings.Contains(body, `"degraded"`) {
			t.Errorf("%s /readyz during the outage: got %d %s, want 200 with status degraded", a, code, body)
		}
	}
	// The clients keep getting (local) prices.
	outage := time.Now()
	for i, r := range recs {
		if !eventually(5*time.Second, func() bool { return len(r.history(outage)) > 0 }) {
			t.Errorf("client %d got no price during the outage", i)
		}
	}

	rs.start()
	if !eventually(20*time.Second, allUp(1)) {
		t.Fatal("tickstream_broker_up not 1 everywhere 20s after Redis returned")
	}
	back := time.Now()
	for _, a := range addrs {
		if code, body := readyz(a); code != http.StatusOK || !strings.Contains(body, `"ready"`) {
			t.Errorf("%s /readyz after the outage: got %d %s, want 200 ready", a, code, body)
		}
	}
	time.Sleep(3 * time.Second)
	if n := agree(t, recs, back); n < 10 {
		t.Errorf("after Redis returned, %d quote versions were held by several clients, want at least 10", n)
	}
	if !eventually(10*time.Second, func() bool { return restAgree(t, addrs, clusterSymbols) }) {
		t.Error("the instances' /v1/quotes never agreed within 10s of Redis returning")
	}
	for i, r := range recs {
		if _, err := r.state(); err != nil {
			t.Errorf("client %d was disconnected or broken: %v", i, err)
		}
	}
}
