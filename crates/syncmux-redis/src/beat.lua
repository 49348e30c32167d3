-- One server's heartbeat, by Redis' clock: it is alive now. Servers silent for longer than
-- the TTL are gone: their members are removed (from the rooms' counts too) and the others hear
-- `{"gone": server}`.
-- ARGV: prefix, server, ttl in milliseconds.
-- Returns 1 when this server was not known (Redis lost it, or took it for gone): it should
-- announce its members again.
local P, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local new = redis.call('ZADD', P .. 'servers', ms, me)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', P .. 'servers', '-inf', ms - ttl)) do
  if gone ~= me then
    local fields = redis.call('SMEMBERS', P .. 'members:' .. gone)
    for _, f in ipairs(fields) do
      -- A field is the JSON array [server, session, kind, name]; rooms are counted apart.
      local ok, member = pcall(cjson.decode, f)
      if ok and type(member) == 'table' and member[3] == 'r' then
        redis.call('SREM', P .. 'room:' .. tostring(member[4]), f)
      end
    end
    for i = 1, #fields, 500 do
      redis.call('HDEL', P .. 'presence', unpack(fields, i, math.min(i + 499, #fields)))
    end
    redis.call('DEL', P .. 'members:' .. gone)
    redis.call('ZREM', P .. 'servers', gone)
    redis.call('PUBLISH', P .. 'events', cjson.encode({gone = gone}))
  end
end
return new
