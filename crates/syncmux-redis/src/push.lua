-- Merges one push atomically (MemoryStore's rules): per record, lww against the stored
-- winner for (table, pk, field), op-based types deduplicated by identity; only new records
-- are appended to the log, each at the next sequence, and the retention applied after each.
-- ARGV: prefix, retention (0: none), origin, count, then per record:
--   table, lww ("1"/"0"), merge key, hlc key, hlc, record JSON.
-- Returns {epoch, head, newest "<hlc>" of the pushed tables or "", {index, seq, ...}}.
local retention = tonumber(ARGV[2])
local origin = ARGV[3]
local count = tonumber(ARGV[4])
local ZERO_HLC_KEY = '092233720368547758080000000000' -- hlc key of 0:0: (keys.rs)
-- Retention: the oldest entry goes, and every index forgets it. Applied after each append,
-- as the MemoryStore does, so a record re-sent in the push that evicts its original is new.
local function evict_oldest()
  local entry = redis.call('XRANGE', LOG, '-', '+', 'COUNT', 1)[1]
  local f = {}
  for j = 1, #entry[2], 2 do f[entry[2][j]] = entry[2][j + 1] end
  local s = tonumber(string.sub(entry[1], 1, string.find(entry[1], '-', 1, true) - 1))
  local t, kind, mkey = f.t, string.sub(f.k, 1, 1), string.sub(f.k, 2)
  if kind == '1' then
    -- A superseded change is not the winner; only the winner's own eviction ends it.
    local w = redis.call('HGET', WIN, mkey)
    if w then
      local _, ws = split(w)
      if tonumber(ws) == s then redis.call('HDEL', WIN, mkey) end
    end
  else
    redis.call('SREM', OPS, mkey)
  end
  redis.call('XDEL', LOG, entry[1])
  redis.call('ZREM', seqs_key(t), int(s))
  redis.call('ZREM', hlcs_key(t), f.h .. '/' .. pad(s))
  local ev = redis.call('HGET', EVICTED, t)
  if (not ev) or less(ev, f.h) then ev = f.h; redis.call('HSET', EVICTED, t, ev) end
  if redis.call('ZCARD', seqs_key(t)) == 0 then
    -- The table is forgotten; its horizon is inherited if it comes back.
    local forgotten = redis.call('HGET', META, 'forgotten')
    if (not forgotten) or less(forgotten, ev) then redis.call('HSET', META, 'forgotten', ev) end
    redis.call('HDEL', EVICTED, t)
    redis.call('HDEL', LATEST, t)
    redis.call('SREM', TABLES, t)
  end
  redis.call('HSET', META, 'first', int(s + 1))
end

local e = epoch()
local seq = tonumber(redis.call('HGET', META, 'seq'))
local accepted = {}
local pushed = {}
for i = 1, count do
  local b = 5 + (i - 1) * 6
  local t, lww, mkey, hkey, hlc, json =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  pushed[t] = true
  local new
  if lww == '1' then
    local w = redis.call('HGET', WIN, mkey)
    new = (not w) or less(split(w), hkey)
  else
    new = redis.call('SADD', OPS, mkey) == 1
  end
  if new then
    seq = seq + 1
    if lww == '1' then redis.call('HSET', WIN, mkey, hkey .. ' ' .. int(seq)) end
    redis.call('XADD', LOG, int(seq) .. '-0',
      'e', e, 't', t, 'k', lww .. mkey, 'h', hkey, 'o', origin, 'r', json)
    if redis.call('SADD', TABLES, t) == 1 then
      -- A table re-created inherits the eviction horizon of the forgotten ones.
      local forgotten = redis.call('HGET', META, 'forgotten')
      if forgotten then redis.call('HSET', EVICTED, t, forgotten) end
    end
    redis.call('ZADD', seqs_key(t), seq, int(seq))
    redis.call('ZADD', hlcs_key(t), 0, hkey .. '/' .. pad(seq))
    -- A table's newest HLC starts at the default HLC (0:0:), as in the MemoryStore.
    local l = redis.call('HGET', LATEST, t) or (ZERO_HLC_KEY .. ' 0:0:')
    if less(split(l), hkey) then l = hkey .. ' ' .. hlc end
    redis.call('HSET', LATEST, t, l)
    accepted[#accepted + 1] = i
    accepted[#accepted + 1] = seq
    if retention > 0 and redis.call('XLEN', LOG) > retention then evict_oldest() end
  end
end
redis.call('HSET', META, 'seq', int(seq))

local newest = ''
for t, _ in pairs(pushed) do
  local l = redis.call('HGET', LATEST, t)
  if l and (newest == '' or less(split(newest), split(l))) then newest = l end
end
if newest ~= '' then
  local _, hlc = split(newest)
  newest = hlc
end
return {e, seq, newest, accepted}
