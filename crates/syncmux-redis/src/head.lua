-- The log's epoch and head (creating the epoch if the log has none).
-- Returns {epoch, head, first}.
local e = epoch()
return {e, tonumber(redis.call('HGET', META, 'seq')), tonumber(redis.call('HGET', META, 'first'))}
