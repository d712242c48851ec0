package broker

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tickstream/tickstream/internal/feed"
	"github.com/tickstream/tickstream/internal/quote"
)

// leaseLoop renews the lease while this instance leads and tries to take
// it otherwise, every sixth of the lease time: a dead leader is replaced
// within about 1.2 lease times.
func (r *Redis) leaseLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.LeaseTTL / 6)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !r.up.Load() {
			continue
		}
		if r.isLeader(time.Now()) {
			r.renew(ctx)
		} else {
			r.acquire(ctx)
		}
	}
}

// isLeader reports whether this instance holds the lease at now. It
// counts the lease from when the last renewal was sent, which is no later
// than when Redis started counting, so this instance stops believing it
// leads before any other can take over.
func (r *Redis) isLeader(now time.Time) bool {
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	return r.leading && now.Before(r.validUntil)
}

func (r *Redis) ttlMS() int64 { return r.cfg.LeaseTTL.Milliseconds() }

func (r *Redis) acquire(ctx context.Context) {
	sent := time.Now()
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	f, err := acquireScript.Run(cctx, r.rdb, []string{r.keys.lease, r.keys.fence}, r.token, r.ttlMS(), sent.UnixMilli()).Int64()
	if err != nil {
		r.fail(ctx, "acquire feed lease", err)
		return
	}
	if f == 0 {
		return
	}
	r.leaseMu.Lock()
	r.leading, r.fence, r.validUntil = true, uint64(f), sent.Add(r.cfg.LeaseTTL)
	r.leaseMu.Unlock()
	r.log.Info("feed leader: this instance publishes prices", "fence", f)
	r.refreshUnion(ctx)
	r.seedMissing(ctx)
}

func (r *Redis) renew(ctx context.Context) {
	sent := time.Now()
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	ok, err := renewScript.Run(cctx, r.rdb, []string{r.keys.lease}, r.token, r.ttlMS()).Int64()
	if err != nil {
		r.fail(ctx, "renew feed lease", err)
		return
	}
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	if ok == 0 {
		r.leading = false
		r.log.Warn("feed lease lost: another instance publishes prices")
		return
	}
	r.validUntil = sent.Add(r.cfg.LeaseTTL)
}

// release hands the lease over on shutdown.
func (r *Redis) release() {
	r.leaseMu.Lock()
	leading := r.leading
	r.leading = false
	r.leaseMu.Unlock()
	if !leading {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := releaseScript.Run(ctx, r.rdb, []string{r.keys.lease}, r.token).Err(); err != nil {
		r.log.Warn("release feed lease", "err", err)
	}
}

// Movable returns what the simulator should move: while Redis is away,
// this instance's own subscribed symbols (it serves local prices); while
// it leads, every symbol some instance uses; otherwise nothing.
func (r *Redis) Movable(dst []*quote.Entry) []*quote.Entry {
	if !r.up.Load() {
		return r.hub.Active(dst)
	}
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	if !r.leading || !time.Now().Before(r.validUntil) {
		return dst
	}
	return append(dst, r.union...)
}

// Publish applies the ticks locally while Redis is away. While this
// instance leads it stores and publishes them in one fenced script; every
// instance, this one included, applies them when they arrive on their
// channels. Otherwise it drops them.
func (r *Redis) Publish(ticks []feed.Tick) int {
	if len(ticks) == 0 {
		return 0
	}
	if !r.up.Load() {
		return r.applyLocal(ticks)
	}
	r.leaseMu.Lock()
	leading, fence := r.leading, r.fence
	r.leaseMu.Unlock()
	if !leading {
		return 0
	}
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	cmd := "PUBLISH"
	if r.cfg.Cluster {
		cmd = "SPUBLISH"
	}
	args := append(r.pubArg[:0], r.token, r.keys.channel, cmd)
	for _, t := range ticks {
		s := shared{stamp: stamp{fence: fence, ms: t.At.UnixMilli()}, price: t.Price}
		args = append(args, t.Entry.Symbol, s.encode())
	}
	r.pubArg = args
	defer clear(r.pubArg)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	ok, err := publishScript.Run(ctx, r.rdb, []string{r.keys.lease, r.keys.quotes}, args...).Int64()
	if err != nil {
		r.fail(ctx, "publish", err)
		return 0
	}
	if ok == 0 {
		r.leaseMu.Lock()
		r.leading = false
		r.leaseMu.Unlock()
		r.log.Warn("feed lease lost before a publish: tick dropped, another instance publishes prices")
		return 0
	}
	return len(ticks)
}

// refreshUnion reloads, on the leader, the symbols some instance uses:
// members of the interest set whose expiry is still ahead, plus this
// instance's own. It also drops expired members.
func (r *Redis) refreshUnion(ctx context.Context) {
	now := time.Now().UnixMilli()
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	syms, err := r.rdb.ZRangeByScore(cctx, r.keys.interest, &redis.ZRangeBy{Min: strconv.FormatInt(now, 10), Max: "+inf"}).Result()
	if err != nil {
		r.fail(ctx, "read interest", err)
		return
	}
	if err := r.rdb.ZRemRangeByScore(cctx, r.keys.interest, "-inf", "("+strconv.FormatInt(now, 10)).Err(); err != nil {
		r.fail(ctx, "trim interest", err)
		return
	}
	seen := make([]bool, len(r.store.Entries()))
	union := r.hub.Active(nil)
	for _, e := range union {
		seen[e.Index] = true
	}
	for _, s := range syms {
		if e, ok := r.store.Lookup(s); ok && !seen[e.Index] {
			seen[e.Index] = true
			union = append(union, e)
		}
	}
	r.leaseMu.Lock()
	r.union = union
	r.leaseMu.Unlock()
}

// seedMissing publishes, on a new leader, this instance's current quote of
// every used symbol the shared hash lacks (after a Redis restart, it lacks
// them all), so that every instance converges on one value at once rather
// than when the symbol next moves.
func (r *Redis) seedMissing(ctx context.Context) {
	r.leaseMu.Lock()
	union := r.union
	r.leaseMu.Unlock()
	_, missing, err := r.read(ctx, union)
	if err != nil || len(missing) == 0 {
		return
	}
	now := time.Now()
	ticks := make([]feed.Tick, len(missing))
	for i, e := range missing {
		ticks[i] = feed.Tick{Entry: e, Price: e.Latest().CurrentPrice, At: now}
	}
	n := r.Publish(ticks)
	r.log.Info("seeded the shared quotes", "symbols", n)
}
