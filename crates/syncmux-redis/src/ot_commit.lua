-- Appends one op to a document's history, only at the expected revision (README, "The OT
-- profile"); the open-ot Redis adapter's layout.
-- KEYS: doc:ID:metadata (hash: type, v), doc:ID:data (the snapshot, JSON),
--       doc:ID:history (list of JSON ops; item i made revision i + 1)
-- ARGV: base revision, op (JSON), text after the op (JSON), channel, the published frame's
--       tail after the revision (`,"docId":...,"origin":...}`)
-- Returns {1, revision} when appended (and published on the channel, in revision order);
-- {0, head, ops after base, snapshot at head} when others appended first; {-1, head} when
-- the history is shorter than the base (the store lost it).
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local base = tonumber(ARGV[1])
if base > v then
  return {-1, v}
end
if base < v then
  return {0, v, redis.call('LRANGE', KEYS[3], base, v - 1), redis.call('GET', KEYS[2]) or '""'}
end
local n = v + 1
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], 'type', 'text', 'v', n)
redis.call('SET', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], '{"type":"op","op":' .. ARGV[2] .. ',"revision":' .. n .. ARGV[5])
return {1, n}
