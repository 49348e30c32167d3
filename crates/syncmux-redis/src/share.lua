-- Publishes a change of one server's presence or rooms (README, "Scaling out over Redis"): the
-- state that a server starting later reads (a hash field per member of a topic or room), and the
-- event the running servers hear, in one step.
-- A room's members are also the set `room:NAME`, which admit.lua counts.
-- ARGV: prefix, server, field ("" for a message), state ("" to remove it), event JSON, room
-- ("" for a presence topic).
local P, server, field, state, event, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if field ~= '' then
  if state ~= '' then
    redis.call('HSET', P .. 'presence', field, state)
    redis.call('SADD', P .. 'members:' .. server, field)
    if room ~= '' then
      redis.call('SADD', P .. 'room:' .. room, field)
    end
  else
    redis.call('HDEL', P .. 'presence', field)
    redis.call('SREM', P .. 'members:' .. server, field)
    if room ~= '' then
      redis.call('SREM', P .. 'room:' .. room, field)
    end
  end
end
redis.call('PUBLISH', P .. 'events', event)
return 1
