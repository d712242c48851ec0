package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"
)

// The tests of BROKER=redis run against a real Redis: REDIS_TEST_URL, or
// the one CI runs on 127.0.0.1:6379. Each uses a prefix of its own, so
// tests never see each other's market.

func testRedisURL() string {
	if u := os.Getenv("REDIS_TEST_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379"
}

// redisPrefix returns a unique REDIS_PREFIX whose keys are deleted at the
// end of the test.
func redisPrefix(t *testing.T, url string) string {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "tickstream-test-" + hex.EncodeToString(b) + ":"
	t.Cleanup(func() {
		opt, err := redis.ParseURL(url)
		if err != nil {
			return
		}
		c := redis.NewClient(opt)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if keys, _ := c.Keys(ctx, prefix+"*").Result(); len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
	return prefix
}

// redisVars are the settings of one instance of a market on prefix.
func redisVars(url, prefix string) map[string]string {
	return map[string]string{
		"BROKER": "redis", "REDIS_URL": url, "REDIS_PREFIX": prefix,
		"PRICE_UPDATE_INTERVAL": "100ms", "SIM_UPDATE": "all",
	}
}

// mintToken is a token for sub "tester" valid for an hour, signed with
// testSecret.
func mintToken(t *testing.T) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256,
		jwt.MapClaims{"sub": "tester", "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// recorder is a WebSocket client that keeps its document in a goroutine of
// its own and remembers every version of every quote it held, keyed by
// symbol and last_updated, so that clients of different instances can be
// compared at the same last_updated.
type recorder struct {
	addr string

	mu       sync.Mutex
	doc      []byte
	seq      int
	seen     map[string]string // "SYM@last_updated" -> the quote's JSON
	messages int
	err      error // why the stream ended or went wrong; nil while it runs well
}

// record connects to addr with symbols and records until the test ends.
func record(t *testing.T, addr, symbols string) *recorder {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws/quotes?symbols="+symbols,
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + mintToken(t)}}})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.SetReadLimit(1 << 20)
	r := &recorder{addr: addr, doc: []byte(`{}`), seen: map[string]string{}}
	done := make(chan struct{})
	go func() { defer close(done); r.run(c) }()
	t.Cleanup(func() { c.CloseNow(); <-done })
	return r
}

func (r *recorder) run(c *websocket.Conn) {
	for {
		_, data, err := c.Read(context.Background())
		if err != nil {
			r.fail(fmt.Errorf("read: %w", err))
			return
		}
		if err := r.handle(data); err != nil {
			r.fail(err)
			return
		}
	}
}

func (r *recorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

func (r *recorder) handle(data []byte) error {
	var m struct {
		Type       string          `json:"type"`
		Seq        int             `json:"seq"`
		Operations json.RawMessage `json:"operations"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("decode %s: %w", data, err)
	}
	if m.Type != "quotes_patch" {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if m.Seq != r.seq+1 {
		return fmt.Errorf("seq: got %d, want %d", m.Seq, r.seq+1)
	}
	r.seq = m.Seq
	p, err := jsonpatch.DecodePatch(m.Operations)
	if err != nil {
		return err
	}
	if r.doc, err = p.Apply(r.doc); err != nil {
		return fmt.Errorf("apply %s: %w", m.Operations, err)
	}
	var d struct{ Quotes map[string]json.RawMessage }
	if err := json.Unmarshal(r.doc, &d); err != nil {
		return err
	}
	for sym, raw := range d.Quotes {
		var q struct {
			LastUpdated string `json:"last_updated"`
		}
		json.Unmarshal(raw, &q)
		r.seen[sym+"@"+q.LastUpdated] = compact(raw)
	}
	r.messages++
	return nil
}

// compact re-encodes a JSON object with sorted keys, so that equal quotes
// compare equal whatever the patches did to the key order.
func compact(raw []byte) string {
	var v map[string]any
	json.Unmarshal(raw, &v)
	b, _ := json.Marshal(v)
	return string(b)
}

func (r *recorder) state() (messages int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.messages, r.err
}

// history returns the versions held since after (by last_updated).
func (r *recorder) history(after time.Time) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	for k, v := range r.seen {
		_, lu, _ := strings.Cut(k, "@")
		if at, err := time.Parse(time.RFC3339Nano, lu); err == nil && !at.Before(after) {
			out[k] = v
		}
	}
	return out
}

// agree compares the clients' histories since after: every symbol version
// (symbol and last_updated) held by two clients must be the same quote. It
// returns how many versions were held by more than one client.
func agree(t *testing.T, recs []*recorder, after time.Time) int {
	t.Helper()
	first := map[string]string{} // key -> quote
	from := map[string]string{}  // key -> instance that held it first
	shared := map[string]bool{}
	for _, r := range recs {
		for k, v := range r.history(after) {
			if w, ok := first[k]; ok {
				shared[k] = true
				if w != v {
					t.Errorf("%s: client of %s holds %s, client of %s holds %s", k, from[k], w, r.addr, v)
				}
				continue
			}
			first[k], from[k] = v, r.addr
		}
	}
	return len(shared)
}

// eventually polls cond every 50 ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metricOf reads one unlabelled sample of addr's /metrics; ok is false when
// the instance does not answer.
func metricOf(addr, name string) (float64, bool) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			return v, err == nil
		}
	}
	return 0, false
}

// restQuotes returns addr's /v1/quotes for symbols, each quote compacted.
func restQuotes(t *testing.T, addr, symbols string) map[string]string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/quotes?symbols="+symbols, nil)
	req.Header.Set("Authorization", "Bearer "+mintToken(t))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s/v1/quotes: %v", addr, err)
	}
	defer resp.Body.Close()
	var body struct{ Quotes map[string]json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s/v1/quotes: %v", addr, err)
	}
	out := map[string]string{}
	for k, v := range body.Quotes {
		out[k] = compact(v)
	}
	return out
}

// restAgree reports whether every instance answers /v1/quotes the same.
func restAgree(t *testing.T, addrs []string, symbols string) bool {
	t.Helper()
	want := restQuotes(t, addrs[0], symbols)
	for _, a := range addrs[1:] {
		got := restQuotes(t, a, symbols)
		for k, v := range want {
			if got[k] != v {
				return false
			}
		}
	}
	return true
}

const clusterSymbols = "AAPL,MSFT,GOOGL,TSLA,SPY"

// TestClusterServesOneMarket: three instances with clients on each; at the
// same last_updated every client holds the same quote, and a fourth
// instance started later serves the shared quotes in its first snapshot.
func TestClusterServesOneMarket(t *testing.T) {
	url := testRedisURL()
	vars := redisVars(url, redisPrefix(t, url))
	var addrs []string
	var recs []*recorder
	for range 3 {
		s := startServer(t, vars)
		addrs = append(addrs, s.addr)
		recs = append(recs, record(t, s.addr, clusterSymbols), record(t, s.addr, "AAPL,MSFT"))
	}
	start := time.Now()
	time.Sleep(3 * time.Second)
	if n := agree(t, recs, start); n < 10 {
		t.Errorf("got %d quote versions held by several clients, want at least 10", n)
	}
	leaders := 0
	for _, a := range addrs {
		v, _ := metricOf(a, "tickstream_feed_leader")
		leaders += int(v)
	}
	if leaders != 1 {
		t.Errorf("tickstream_feed_leader summed over the instances: got %d, want 1", leaders)
	}
	if !eventually(10*time.Second, func() bool { return restAgree(t, addrs, clusterSymbols) }) {
		t.Error("the instances' /v1/quotes never agreed within 10s")
	}

	// A fourth instance, started now, serves the market in its first
	// snapshot: each quote is one the other instances' clients held.
	late := startServer(t, vars)
	c := late.dial("?symbols=" + clusterSymbols)
	c.next()
	snapshot := c.quotes()
	if len(snapshot) != 5 {
		t.Fatalf("snapshot holds %d quotes, want 5", len(snapshot))
	}
	for sym, q := range snapshot {
		b, _ := json.Marshal(q)
		key := sym + "@" + q["last_updated"].(string)
		var held string
		if !eventually(5*time.Second, func() bool { held = recs[0].history(time.Time{})[key]; return held != "" }) {
			t.Errorf("late instance's %s is %s, a version no client of the market held", sym, b)
			continue
		}
		if held != string(b) {
			t.Errorf("late instance's %s: got %s, want %s", sym, b, held)
		}
	}
	for i, r := range recs {
		if _, err := r.state(); err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
}
