package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tickstream/tickstream/internal/feed"
	"github.com/tickstream/tickstream/internal/hub"
	"github.com/tickstream/tickstream/internal/quote"
)

// testRedisURL is the Redis these tests use: REDIS_TEST_URL, or the one CI
// runs on the default port.
func testRedisURL() string {
	if u := os.Getenv("REDIS_TEST_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379"
}

// testPrefix returns a prefix no other test uses, and deletes its keys at
// the end of the test.
func testPrefix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "tickstream-test-" + hex.EncodeToString(b) + ":"
	t.Cleanup(func() {
		opt, _ := redis.ParseURL(testRedisURL())
		c := redis.NewClient(opt)
		defer c.Close()
		ctx := context.Background()
		keys, _ := c.Keys(ctx, prefix+"*").Result()
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
	return prefix
}

func newTestBroker(t *testing.T, prefix string) (*Redis, *hub.Hub) {
	t.Helper()
	store, err := quote.NewStore(quote.Builtin(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h := hub.New(store)
	r, err := NewRedis(RedisConfig{URL: testRedisURL(), Prefix: prefix, LeaseTTL: 3 * time.Second}, h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Connect(context.Background(), 2*time.Second); err != nil {
		t.Fatalf("redis at %s: %v", testRedisURL(), err)
	}
	t.Cleanup(func() { r.ps.Close(); r.rdb.Close() })
	return r, h
}

func TestSharedQuoteIsByteIdentical(t *testing.T) {
	// Two instances whose stores went different ways apply the same
	// shared quote: their JSON must be equal byte for byte.
	tests := []struct {
		name  string
		price float64
		at    time.Time
	}{
		{"cents", 150.25, time.Date(2026, 11, 29, 2, 0, 0, 123_000_000, time.UTC)},
		{"rounded half", 150.255, time.Date(2026, 11, 29, 2, 0, 0, 123_456_789, time.UTC)},
		{"older than the local quote", 149.5, time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"tiny", 1.004, time.Date(2026, 11, 29, 2, 0, 1, 999_999_999, time.FixedZone("x", 3600))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _ := quote.NewStore(quote.Builtin(), time.Now())
			b, _ := quote.NewStore(quote.Builtin(), time.Now().Add(-time.Hour))
			ea, _ := a.Lookup("AAPL")
			eb, _ := b.Lookup("AAPL")
			eb.Set(171.11, time.Now()) // b has a history a does not
			payload := shared{stamp: stamp{fence: 7, ms: tt.at.UnixMilli()}, price: tt.price}.encode()
			s, err := decode(payload)
			if err != nil {
				t.Fatalf("decode %q: %v", payload, err)
			}
			qa, _ := ea.Set(s.price, s.at())
			qb, _ := eb.Set(s.price, s.at())
			if string(qa.JSON) != string(qb.JSON) {
				t.Errorf("got %s and %s, want equal", qa.JSON, qb.JSON)
			}
			if want := quote.Round2(tt.price); qa.CurrentPrice != want {
				t.Errorf("price: got %v, want %v", qa.CurrentPrice, want)
			}
		})
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	for _, p := range []string{"", "1 2", "x 2 3", "1 y 3", "1 2 z", "1 2 -5", "1 2 NaN"} {
		if _, err := decode(p); err == nil {
			t.Errorf("decode(%q): got nil error, want one", p)
		}
	}
}

func TestStampOrder(t *testing.T) {
	tests := []struct {
		a, b stamp
		want bool
	}{
		{stamp{2, 1}, stamp{1, 9}, true}, // a later leader wins, even with an older time
		{stamp{1, 9}, stamp{2, 1}, false},
		{stamp{1, 5}, stamp{1, 4}, true},
		{stamp{1, 5}, stamp{1, 5}, false},
		{stamp{1, 1}, stamp{}, true},
	}
	for _, tt := range tests {
		if got := tt.a.newer(tt.b); got != tt.want {
			t.Errorf("%v newer than %v: got %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// TestPausedLeaderCannotPublish: a leader that lost its lease while paused
// (here: the lease key vanished and another instance took it) publishes
// nothing when it wakes up, and the new leader's fence is higher.
func TestPausedLeaderCannotPublish(t *testing.T) {
	prefix := testPrefix(t)
	a, ha := newTestBroker(t, prefix)
	b, _ := newTestBroker(t, prefix)
	ctx := context.Background()

	a.acquire(ctx)
	if !a.isLeader(time.Now()) {
		t.Fatal("a: got not leader, want leader")
	}
	b.acquire(ctx)
	if b.isLeader(time.Now()) {
		t.Fatal("b took a held lease")
	}
	aapl, _ := ha.Store().Lookup("AAPL")
	if n := a.Publish([]feed.Tick{{Entry: aapl, Price: 100.01, At: time.Now()}}); n != 1 {
		t.Fatalf("a published %d, want 1", n)
	}

	// a pauses past its lease: the key expires and b takes over.
	a.rdb.Del(ctx, a.keys.lease)
	b.acquire(ctx)
	if !b.isLeader(time.Now()) {
		t.Fatal("b: got not leader after the lease expired, want leader")
	}
	if b.fence <= a.fence {
		t.Errorf("fence: b %d, a %d, want b's higher", b.fence, a.fence)
	}
	if n := a.Publish([]feed.Tick{{Entry: aapl, Price: 200.02, At: time.Now()}}); n != 0 {
		t.Errorf("paused leader published %d quotes, want 0", n)
	}
	if a.isLeader(time.Now()) {
		t.Error("a still believes it leads after a refused publish")
	}
	got, err := a.rdb.HGet(ctx, a.keys.quotes, "AAPL").Result()
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := decode(got); s.price != 100.01 {
		t.Errorf("shared AAPL: got %q, want the price 100.01 the real leader published", got)
	}
}

// TestFollowAppliesSharedQuote: a subscriber on an instance that did not
// follow a symbol gets the shared quote in its snapshot, not the local one.
func TestFollowAppliesSharedQuote(t *testing.T) {
	prefix := testPrefix(t)
	leader, hl := newTestBroker(t, prefix)
	follower, hf := newTestBroker(t, prefix)
	hf.BeforeSubscribe(follower.Prepare)
	leader.acquire(context.Background())
	aapl, _ := hl.Store().Lookup("AAPL")
	at := time.Now().Add(time.Second)
	if n := leader.Publish([]feed.Tick{{Entry: aapl, Price: 123.45, At: at}}); n != 1 {
		t.Fatalf("published %d, want 1", n)
	}
	faapl, _ := hf.Store().Lookup("AAPL")
	hf.NewSubscriber(func() {}).Subscribe([]*quote.Entry{faapl})
	want, _ := aapl.Set(123.45, at) // what the leader's own echo will make
	if got := faapl.Latest(); string(got.JSON) != string(want.JSON) {
		t.Errorf("follower's AAPL after subscribe: got %s, want %s", got.JSON, want.JSON)
	}
}
