package broker

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tickstream/tickstream/internal/hub"
	"github.com/tickstream/tickstream/internal/quote"
)

// RedisConfig holds the Redis broker's settings.
type RedisConfig struct {
	URL      string        // REDIS_URL: redis:// or rediss://, with user and password if any
	Prefix   string        // REDIS_PREFIX: every key and channel starts with it
	Cluster  bool          // REDIS_CLUSTER: Redis Cluster, sharded Pub/Sub
	LeaseTTL time.Duration // FEED_LEASE_TTL: how long a silent leader keeps the feed
}

// Timings of the background loops. The health check decides
// tickstream_broker_up; interest and sweep keep the leader's symbol set
// and this instance's subscriptions current; repair re-reads the shared
// quotes of followed symbols, so a Pub/Sub message lost in a reconnect is
// made good within a few seconds.
const (
	healthEvery   = 500 * time.Millisecond
	opTimeout     = time.Second
	interestEvery = time.Second
	interestTTL   = 5 * time.Second
	repairEvery   = 2 * time.Second
	backoffMin    = 100 * time.Millisecond
	backoffMax    = 5 * time.Second
	hmgetBatch    = 500
)

// Redis is the broker of several instances (BROKER=redis). Every instance
// runs the simulator, but only the holder of the feed lease publishes: it
// stores each tick's quotes in one hash and publishes them on one channel
// per symbol, in one script that first checks the lease (fencing). Every
// instance, the leader included, applies what it receives for the symbols
// its clients use, so all serve byte-identical quotes. While Redis is
// unreachable the instance serves prices from its own simulator, and
// resynchronises from the hash when Redis returns.
type Redis struct {
	cfg   RedisConfig
	log   *slog.Logger
	hub   *hub.Hub
	store *quote.Store
	rdb   redis.UniversalClient
	ps    *redis.PubSub
	keys  keys
	token string // this instance's lease token

	up     atomic.Bool
	reason atomic.Pointer[string] // why not up

	leaseMu    sync.Mutex // guards leading, fence, validUntil and union
	leading    bool
	fence      uint64
	validUntil time.Time      // send time of the last successful renew + TTL
	union      []*quote.Entry // symbols some instance uses, refreshed by the leader

	// subMu serialises changes of the followed set: Prepare, the sweep
	// and resync. followed[i] is set while this instance is subscribed to
	// entry i's channel and has read its shared quote.
	subMu    sync.Mutex
	followed []atomic.Bool

	applyMu sync.Mutex     // guards applied and updBuf
	applied []stamp        // by entry index: the newest shared quote applied
	updBuf  []*quote.Entry // reused by apply

	pubMu  sync.Mutex // serialises Publish; guards pubArg
	pubArg []any
}

// keys are the names in Redis. They all carry the hash tag {q}, so in a
// cluster they share one slot and the publish script may touch them all.
type keys struct {
	lease, fence, quotes, interest, channel string
}

func newKeys(prefix string) keys {
	p := prefix + "{q}:"
	return keys{lease: p + "lease", fence: p + "fence", quotes: p + "quotes", interest: p + "interest", channel: p + "sym:"}
}

// NewRedis returns a Redis broker for the entries of h's store. It does not
// connect: Connect and Run do.
func NewRedis(cfg RedisConfig, h *hub.Hub, log *slog.Logger) (*Redis, error) {
	rdb, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 16)
	crand.Read(tok) // never fails (crypto/rand)
	n := len(h.Store().Entries())
	r := &Redis{
		cfg: cfg, log: log.With("broker", "redis"), hub: h, store: h.Store(), rdb: rdb,
		keys: newKeys(cfg.Prefix), token: hex.EncodeToString(tok),
		followed: make([]atomic.Bool, n), applied: make([]stamp, n),
	}
	r.setDown("not connected yet")
	if cfg.Cluster {
		r.ps = rdb.SSubscribe(context.Background())
	} else {
		r.ps = rdb.Subscribe(context.Background())
	}
	return r, nil
}

// newClient parses the URL (a password in it is never logged) and sets
// short timeouts, so an outage is noticed within about a second, and no
// retries, so a publish is never sent twice.
func newClient(cfg RedisConfig) (redis.UniversalClient, error) {
	if cfg.Cluster {
		opt, err := redis.ParseClusterURL(cfg.URL)
		if err != nil {
			return nil, errors.New("REDIS_URL: not a Redis Cluster URL")
		}
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = opTimeout, opTimeout, opTimeout
		opt.MaxRetries, opt.ContextTimeoutEnabled = -1, true
		return redis.NewClusterClient(opt), nil
	}
	opt, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, errors.New("REDIS_URL: not a Redis URL")
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = opTimeout, opTimeout, opTimeout
	opt.MaxRetries, opt.ContextTimeoutEnabled = -1, true
	return redis.NewClient(opt), nil
}

// Connect checks that Redis answers within d, so that an instance that
// starts with Redis reachable serves the shared market to its very first
// client. When it does not, the instance starts degraded and Run keeps
// trying.
func (r *Redis) Connect(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		r.setDown("redis unreachable")
		return fmt.Errorf("redis ping: %w", err)
	}
	r.setUp()
	return nil
}

// Status reports whether Redis answers and whether this instance leads.
func (r *Redis) Status() Status {
	up := r.up.Load()
	s := Status{Up: up, Leader: up && r.isLeader(time.Now())}
	if !up {
		s.Reason = *r.reason.Load()
	}
	return s
}

func (r *Redis) setUp() {
	if !r.up.Swap(true) {
		r.log.Info("redis up")
	}
}

// setDown marks Redis unreachable: the instance stops leading and serves
// its own prices until the health check brings it back.
func (r *Redis) setDown(reason string) {
	r.reason.Store(&reason)
	if r.up.Swap(false) {
		r.log.Warn("redis down: serving local prices until it returns", "reason", reason)
	}
	r.leaseMu.Lock()
	r.leading = false
	r.leaseMu.Unlock()
}

// Run runs the health check, the lease, the subscription receiver and the
// upkeep of interest and subscriptions until ctx ends, then hands the
// lease over and closes the connections.
func (r *Redis) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){r.healthLoop, r.leaseLoop, r.receiveLoop, r.upkeepLoop} {
		wg.Add(1)
		go func() { defer wg.Done(); loop(ctx) }()
	}
	wg.Wait()
	r.release()
	return errors.Join(r.ps.Close(), r.rdb.Close())
}

// healthLoop pings Redis. After a failure it retries with exponential
// backoff and jitter; on the first success after an outage it resyncs
// before it reports up, so that /readyz turns ready only once the
// instance serves the shared market again.
func (r *Redis) healthLoop(ctx context.Context) {
	var b backoff
	delay := time.Duration(0)
	for {
		if !sleep(ctx, delay) {
			return
		}
		err := r.ping(ctx)
		if err == nil && !r.up.Load() {
			if err = r.resync(ctx); err == nil {
				r.setUp()
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.setDown("redis unreachable")
			r.log.Debug("redis health check failed", "err", err)
			delay = b.next()
			continue
		}
		b.reset()
		delay = healthEvery
	}
}

func (r *Redis) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return r.rdb.Ping(ctx).Err()
}

// sleep waits d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// fail handles the error of a Redis command: a network error or timeout
// means Redis is away; anything else is logged.
func (r *Redis) fail(ctx context.Context, what string, err error) {
	if ctx.Err() != nil {
		return
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		r.log.Error(what, "err", err)
		return
	}
	r.setDown(what + ": redis unreachable")
}

// channelOf returns the Pub/Sub channel of e.
func (r *Redis) channelOf(e *quote.Entry) string { return r.keys.channel + e.Symbol }

// entryOf returns the entry of a channel name, if it is one of ours.
func (r *Redis) entryOf(channel string) (*quote.Entry, bool) {
	sym, ok := strings.CutPrefix(channel, r.keys.channel)
	if !ok {
		return nil, false
	}
	return r.store.Lookup(sym)
}

// backoff is the health check's delay after failures: doubling from
// backoffMin to backoffMax, each delay drawn from its upper half, so
// instances that lost Redis together do not return in step.
type backoff struct{ step time.Duration }

func (b *backoff) next() time.Duration {
	b.step = min(max(2*b.step, backoffMin), backoffMax)
	return b.step/2 + rand.N(b.step/2+1)
}

func (b *backoff) reset() { b.step = 0 }
