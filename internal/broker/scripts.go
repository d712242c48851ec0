package broker

import "github.com/redis/go-redis/v9"

// The Lua scripts run atomically in Redis, so "is this instance still the
// leader?" and "publish" cannot be separated by another instance taking the
// lease. Every key and channel they touch carries the same hash tag ({q}),
// so in Redis Cluster they live in one slot and one script may touch them
// all (see README, "Scaling out").

// acquireScript takes the lease if nobody holds it and returns the new
// fencing number; if this instance still holds it (it stepped down during
// an outage shorter than the lease) it extends it and returns the current
// fence; it returns 0 when another instance holds it.
// KEYS: lease, fence. ARGV: token, ttl ms, now ms.
// The fence is max(previous+1, now ms): it grows with every leader and
// keeps growing across a Redis restart that lost the counter, as long as
// the instances' clocks agree within the lease time.
var acquireScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if cur then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local f = redis.call('INCR', KEYS[2])
local now = tonumber(ARGV[3])
if f < now then
  redis.call('SET', KEYS[2], ARGV[3])
  f = now
end
return f
`)

// renewScript extends the lease if this instance holds it: 1, else 0.
// KEYS: lease. ARGV: token, ttl ms.
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// releaseScript deletes the lease if this instance holds it, so that a
// clean shutdown hands over at once instead of after the lease time.
// KEYS: lease. ARGV: token.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// publishScript stores and publishes one tick's quotes only while the lease
// holds this instance's token: a leader paused past its lease (GC, SIGSTOP,
// a partition) cannot publish once another instance took over. Returns 1
// when published, 0 when the lease is lost.
// KEYS: lease, quotes hash. ARGV: token, channel prefix, publish command
// (PUBLISH or SPUBLISH), then symbol, payload pairs.
var publishScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+1])
  redis.call(ARGV[3], ARGV[2] .. ARGV[i], ARGV[i+1])
end
return 1
`)
