-- Publishes a change of one server's presence or rooms (README, "Scaling out over Redis"): the
-- state that a server starting later reads (a hash field per member of a topic or room), and the
-- event the running servers hear, in one step.
-- ARGV: prefix, server, field ("" for a message), state ("" to remove it), event JSON.
local P, server, field, state, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if field ~= '' then
  if state ~= '' then
    redis.call('HSET', P .. 'presence', field, state)
    redis.call('SADD', P .. 'members:' .. server, field)
  else
    redis.call('HDEL', P .. 'presence', field)
    redis.call('SREM', P .. 'members:' .. server, field)
  end
end
redis.call('PUBLISH', P .. 'events', event)
return 1
