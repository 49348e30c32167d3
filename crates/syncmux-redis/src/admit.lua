-- Admits a session of one server to a room if the room, over every server, has room: the
-- room's members are the set `room:NAME` (kept by share.lua and beat.lua), so the check and
-- the place it takes are one step, and two servers cannot both take the last place.
-- ARGV: prefix, server, field (the member's), room, most members.
-- Returns 1 when admitted (or already a member), 0 when the room is full.
local P, server, field, room, max = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = P .. 'room:' .. room
if redis.call('SISMEMBER', key, field) == 1 then
  return 1
end
if redis.call('SCARD', key) >= max then
  return 0
end
redis.call('SADD', key, field)
redis.call('SADD', P .. 'members:' .. server, field)
return 1
