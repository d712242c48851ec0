package broker

import (
	"context"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tickstream/tickstream/internal/feed"
	"github.com/tickstream/tickstream/internal/quote"
)

// update is one shared quote for one entry, received or read.
type update struct {
	e *quote.Entry
	s shared
}

// receiveLoop applies the quotes that arrive on the followed channels.
// It takes every message already waiting, so one tick's symbols reach the
// hub as one batch and a connection gets them in one message.
func (r *Redis) receiveLoop(ctx context.Context) {
	ch := r.ps.Channel(redis.WithChannelSize(8192))
	var batch []update
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			batch = r.appendMessage(batch[:0], m)
		}
	drain:
		for len(batch) < 8192 {
			select {
			case m, ok := <-ch:
				if !ok {
					break drain
				}
				batch = r.appendMessage(batch, m)
			default:
				break drain
			}
		}
		r.apply(batch)
		clear(batch)
	}
}

func (r *Redis) appendMessage(batch []update, m *redis.Message) []update {
	e, ok := r.entryOf(m.Channel)
	if !ok {
		return batch
	}
	s, err := decode(m.Payload)
	if err != nil {
		r.log.Warn("ignored a message", "channel", m.Channel, "err", err)
		return batch
	}
	return append(batch, update{e, s})
}

// apply sets every update newer than what its entry holds from Redis and
// publishes the changed entries to the hub as one batch. A follower's
// quote is the leader's byte for byte: Entry.Set builds it from the same
// rounded price and millisecond.
func (r *Redis) apply(us []update) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	buf := r.updBuf[:0]
	for _, u := range us {
		i := u.e.Index
		if !u.s.newer(r.applied[i]) {
			continue
		}
		r.applied[i] = u.s.stamp
		if _, changed := u.e.Set(u.s.price, u.s.at()); changed {
			buf = append(buf, u.e)
		}
	}
	if len(buf) > 0 {
		r.hub.Publish(buf)
	}
	clear(buf)
	r.updBuf = buf[:0]
}

// applyLocal applies the local simulator's ticks while Redis is away. The
// entries it moves forget their shared stamp, so that whatever Redis holds
// when it returns replaces the local prices, even if it is older.
func (r *Redis) applyLocal(ticks []feed.Tick) int {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	for _, t := range ticks {
		r.applied[t.Entry.Index] = stamp{}
	}
	r.updBuf = applyTicks(r.hub, ticks, r.updBuf[:0])
	n := len(r.updBuf)
	clear(r.updBuf)
	return n
}

// Prepare follows the entries this instance does not follow yet: it
// subscribes to their channels, then reads their shared quotes and applies
// them, before the subscriber's snapshot is built. Subscribing first means
// a tick published meanwhile is not lost; the stamps make whichever of the
// two is newer win. While Redis is away it does nothing: resync follows
// them when it returns.
func (r *Redis) Prepare(entries []*quote.Entry) {
	if r.allFollowed(entries) || !r.up.Load() {
		return
	}
	r.subMu.Lock()
	defer r.subMu.Unlock()
	var need []*quote.Entry
	for _, e := range entries {
		if !r.followed[e.Index].Load() {
			need = append(need, e)
		}
	}
	if len(need) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*opTimeout)
	defer cancel()
	r.follow(ctx, need)
}

func (r *Redis) allFollowed(entries []*quote.Entry) bool {
	for _, e := range entries {
		if !r.followed[e.Index].Load() {
			return false
		}
	}
	return true
}

// follow subscribes to the entries' channels, reads and applies their
// shared quotes, marks them followed and adds them to the interest set so
// that the leader moves them. r.subMu is held.
func (r *Redis) follow(ctx context.Context, es []*quote.Entry) error {
	for chunk := range slices.Chunk(es, hmgetBatch) {
		chans := make([]string, len(chunk))
		for i, e := range chunk {
			chans[i] = r.channelOf(e)
		}
		var err error
		if r.cfg.Cluster {
			err = r.ps.SSubscribe(ctx, chans...)
		} else {
			err = r.ps.Subscribe(ctx, chans...)
		}
		if err != nil {
			r.fail(ctx, "subscribe", err)
			return err
		}
	}
	us, _, err := r.read(ctx, es)
	if err != nil {
		return err
	}
	r.apply(us)
	for _, e := range es {
		r.followed[e.Index].Store(true)
	}
	return r.addInterest(ctx, es)
}

// read fetches the shared quotes of es with HMGET in batches. It returns
// those present and the entries the hash lacks.
func (r *Redis) read(ctx context.Context, es []*quote.Entry) ([]update, []*quote.Entry, error) {
	var us []update
	var missing []*quote.Entry
	for chunk := range slices.Chunk(es, hmgetBatch) {
		syms := make([]string, len(chunk))
		for i, e := range chunk {
			syms[i] = e.Symbol
		}
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		vals, err := r.rdb.HMGet(cctx, r.keys.quotes, syms...).Result()
		cancel()
		if err != nil {
			r.fail(ctx, "read shared quotes", err)
			return nil, nil, err
		}
		for i, v := range vals {
			str, ok := v.(string)
			if !ok {
				missing = append(missing, chunk[i])
				continue
			}
			s, err := decode(str)
			if err != nil {
				r.log.Warn("ignored a shared quote", "symbol", chunk[i].Symbol, "err", err)
				continue
			}
			us = append(us, update{chunk[i], s})
		}
	}
	return us, missing, nil
}

// addInterest records in the interest set that this instance uses es, for
// interestTTL.
func (r *Redis) addInterest(ctx context.Context, es []*quote.Entry) error {
	if len(es) == 0 {
		return nil
	}
	until := float64(time.Now().Add(interestTTL).UnixMilli())
	for chunk := range slices.Chunk(es, hmgetBatch) {
		zs := make([]redis.Z, len(chunk))
		for i, e := range chunk {
			zs[i] = redis.Z{Score: until, Member: e.Symbol}
		}
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := r.rdb.ZAddGT(cctx, r.keys.interest, zs...).Err()
		cancel()
		if err != nil {
			r.fail(ctx, "record interest", err)
			return err
		}
	}
	return nil
}

// resync, after an outage, makes every used symbol's quote the shared one
// again: it forgets every stamp (the local simulator moved prices, and a
// restarted Redis may number its fences anew), then follows again what
// this instance follows or uses. Symbols the hash lacks are seeded by the
// leader.
func (r *Redis) resync(ctx context.Context) error {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	r.applyMu.Lock()
	clear(r.applied)
	r.applyMu.Unlock()
	var es []*quote.Entry
	for i, e := range r.store.Entries() {
		if r.followed[i].Load() || r.hub.Subscribed(e) {
			es = append(es, e)
		}
	}
	if err := r.follow(ctx, es); err != nil {
		return err
	}
	r.log.Info("resynchronised from redis", "symbols", len(es))
	return nil
}

// upkeepLoop, every second while Redis answers: drops the symbols nobody
// here uses any more, refreshes this instance's interest, reloads the
// leader's union, and every other second repairs followed quotes from the
// hash.
func (r *Redis) upkeepLoop(ctx context.Context) {
	t := time.NewTicker(interestEvery)
	defer t.Stop()
	lastRepair := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !r.up.Load() {
			continue
		}
		used := r.sweep(ctx)
		r.addInterest(ctx, used)
		if r.isLeader(time.Now()) {
			r.refreshUnion(ctx)
		}
		if time.Since(lastRepair) >= repairEvery {
			lastRepair = time.Now()
			if us, _, err := r.read(ctx, used); err == nil {
				r.apply(us)
			}
		}
	}
}

// sweep unsubscribes from the channels of followed symbols that have no
// subscriber here and returns those still used. It clears an entry's
// followed flag before it looks at the hub: a Subscribe that joins the
// topic meanwhile either is seen here or finds the flag clear and follows
// the symbol again through Prepare.
func (r *Redis) sweep(ctx context.Context) []*quote.Entry {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	var drop, used []string
	var usedEntries []*quote.Entry
	for i, e := range r.store.Entries() {
		if !r.followed[i].Load() {
			continue
		}
		r.followed[i].Store(false)
		if r.hub.Subscribed(e) {
			r.followed[i].Store(true)
			used = append(used, e.Symbol)
			usedEntries = append(usedEntries, e)
			continue
		}
		drop = append(drop, r.channelOf(e))
	}
	for chunk := range slices.Chunk(drop, hmgetBatch) {
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		var err error
		if r.cfg.Cluster {
			err = r.ps.SUnsubscribe(cctx, chunk...)
		} else {
			err = r.ps.Unsubscribe(cctx, chunk...)
		}
		cancel()
		if err != nil {
			r.fail(ctx, "unsubscribe", err)
			break
		}
	}
	if len(drop) > 0 {
		r.log.Debug("unfollowed symbols", "count", len(drop), "following", len(used))
	}
	return usedEntries
}
