-- Reads a pull or a replay atomically, with the head it was read at.
-- ARGV: prefix, cursor epoch ("" for none), cursor seq, since hlc key ("" for none), tables...
-- With a cursor this log serves (its epoch, not beyond the head, nothing after it evicted):
-- the changes after it. Otherwise those after `since` (or all), which the caller sorts.
-- Returns {epoch, head, served (1/0), {seq, member, json, ...}, {latest per table},
-- {evicted horizon per table}}, "" where a table has none.
local cepoch, cseq, since = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local e = epoch()
local head = tonumber(redis.call('HGET', META, 'seq'))
local first = tonumber(redis.call('HGET', META, 'first'))
local served = cepoch == e and cseq ~= nil and cseq <= head and cseq >= first - 1
local out, latest, evicted = {}, {}, {}
local forgotten = redis.call('HGET', META, 'forgotten') or ''
local function fetch(s, member)
  local entry = redis.call('XRANGE', LOG, int(s) .. '-0', int(s) .. '-0')[1]
  if not entry then return end
  for j = 1, #entry[2], 2 do
    if entry[2][j] == 'r' then
      out[#out + 1] = s
      out[#out + 1] = member
      out[#out + 1] = entry[2][j + 1]
    end
  end
end
for i = 5, #ARGV do
  local t = ARGV[i]
  local l = redis.call('HGET', LATEST, t)
  if l then
    local _, hlc = split(l)
    latest[#latest + 1] = hlc
  else
    latest[#latest + 1] = ''
  end
  if redis.call('SISMEMBER', TABLES, t) == 1 then
    evicted[#evicted + 1] = redis.call('HGET', EVICTED, t) or ''
  else
    evicted[#evicted + 1] = forgotten
  end
  if served then
    for _, s in ipairs(redis.call('ZRANGEBYSCORE', seqs_key(t), '(' .. int(cseq), '+inf')) do
      fetch(tonumber(s), '')
    end
  else
    local from = '-'
    if since ~= '' then from = '(' .. since .. '/~' end
    for _, m in ipairs(redis.call('ZRANGEBYLEX', hlcs_key(t), from, '+')) do
      fetch(tonumber(string.sub(m, -20)), m)
    end
  end
end
return {e, head, served and 1 or 0, out, latest, evicted}
