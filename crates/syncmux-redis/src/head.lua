-- The log's epoch and head (creating the epoch if the log has none).
-- Returns {epoch, head, first, base}.
local e = epoch()
local meta = redis.call('HMGET', META, 'seq', 'first', 'base')
return {e, tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3] or '0')}
