-- Shared by every script of the Redis backend (src/adapters/redis/mod.rs, "Keys").
-- ARGV[1] is the key prefix, hash tag included ("{syncmux}:"), so every key is in one slot.
local P = ARGV[1]
local META = P .. 'meta'        -- hash: epoch, seq (the head), first (oldest retained seq)
local LOG = P .. 'log'          -- stream: entry "<seq>-0" per accepted change
local WIN = P .. 'win'          -- hash: lww (table, pk, field) -> "<hlc key> <seq>" of the winner
local OPS = P .. 'ops'          -- set: identities (table, pk, field, hlc) of retained op changes
local TABLES = P .. 'tables'    -- set: tables holding a retained change
local LATEST = P .. 'latest'    -- hash: table -> "<hlc key> <hlc>" newest accepted
local EVICTED = P .. 'evicted'  -- hash: table -> hlc key of its newest evicted change
local function seqs_key(t) return P .. 's:' .. t end  -- zset: the table's seqs (score = seq)
local function hlcs_key(t) return P .. 'h:' .. t end  -- zset (lex): "<hlc key>/<seq, 20 digits>"

local function int(n) return string.format('%d', n) end
local function pad(n) return string.format('%020d', n) end

-- Byte order, whatever locale Redis runs in (Lua's `<` on strings uses strcoll).
local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- "<word> <rest>": the first word and the rest.
local function split(s)
  local at = string.find(s, ' ', 1, true)
  return string.sub(s, 1, at - 1), string.sub(s, at + 1)
end

-- A new epoch from Redis' clock, never the one it replaces.
local function new_epoch(old)
  local now = redis.call('TIME')
  local e = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
  if old and tonumber(e) <= tonumber(old) then e = int(tonumber(old) + 1) end
  return e
end

-- This server's replication id: a replica promoted to primary gets a new one.
local function replid()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
end

-- The epoch of the log, created from Redis' clock when the metadata is missing: a new Redis,
-- or one that lost its data. Whatever is left of an older history goes with it, so a cursor
-- from before is never served and a sequence is never reused.
-- With ROTATE (set by the backend when acknowledgements do not wait for replicas), a log
-- whose primary changed (its replication id did: a failover, or a restart that forgot it)
-- starts a new epoch at its head, keeping its entries: the old primary may have held newer
-- ones that no replica copied, whose positions must not be handed out again. `base` is the
-- head an epoch started at (followers of the new epoch start there).
local function epoch()
  local e = redis.call('HGET', META, 'epoch')
  if e then
    if ROTATE then
      local id, was = replid(), redis.call('HGET', META, 'replid')
      if id ~= was then
        if was then
          e = new_epoch(e)
          redis.call('HSET', META, 'epoch', e, 'base', redis.call('HGET', META, 'seq'))
        end
        redis.call('HSET', META, 'replid', id)
      end
    end
    return e
  end
  for _, t in ipairs(redis.call('SMEMBERS', TABLES)) do
    redis.call('DEL', seqs_key(t), hlcs_key(t))
  end
  redis.call('DEL', LOG, WIN, OPS, TABLES, LATEST, EVICTED)
  e = new_epoch(nil)
  redis.call('HSET', META, 'epoch', e, 'seq', 0, 'first', 1, 'base', 0, 'replid', replid())
  return e
end
