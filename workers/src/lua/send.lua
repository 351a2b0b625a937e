-- send.lua — the hot path of apply.lua for the one command every chat sends most: a new
-- message, in order, from its partition's current owner. Anything else (a duplicate, a
-- refusal, a fenced writer, a command out of order, an assistant reply) is declined
-- without writing, and the same command goes to apply.lua, which knows every case.
--
-- KEYS (the conversation's hash tag): meta, order, msgs, members, events, failed, idem, idemat
-- ARGV — `SendRequest::ARGV` in persistence/apply.rs, positional because this runs once per
-- message and decoding a map costs more than half the commands below ('' = none):
--   ms, seq, after_ms, after_seq, part, epoch, publish, channel, grace_ms,
--   event_head (with the metadata line before it: only published), event_tail, actor,
--   message_id, message, human, max_messages, max_bytes ('0' = no limit on the stored bytes),
--   fingerprint, idem_window, idem_max (a message whose id derives from the client's key: its
--   record, as in apply.lua; a record already there — a retry or a reuse of the key — is
--   apply.lua's to answer)
-- Returns { 1, eventId, deadline, assistant (0/1), newest human eventId } when applied,
-- { 0 } when declined.
local ms, seq, after_ms, after_seq, part, epoch, publish, channel, grace_ms, event_head, event_tail, actor, message_id, message, human, max_messages, max_bytes, fingerprint, idem_window, idem_max = unpack(ARGV, 1, 20)
local META, ORDER, MSGS, MEMBERS, IDEM, IDEMAT = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7], KEYS[8]
local window, idem_cap = tonumber(idem_window) or 0, tonumber(idem_max) or 0
local keyed = fingerprint ~= '' and window > 0 and idem_cap > 0

local m = redis.call('HMGET', META, 'kind', 'assistant', 'ttl', 'cm', 'cs', 'fp', 'fe',
  'eseq', 'cnt', 'xp', 'hseq', 'bytes')
if not m[1] then
  return { 0 }
end
-- Fenced, out of order, a duplicate, full (in messages or bytes): apply.lua answers those.
if m[6] == part and tonumber(epoch) < tonumber(m[7] or 0) then
  return { 0 }
end
if after_ms ~= '' and (after_ms ~= m[4] or after_seq ~= m[5]) then
  return { 0 }
end
local ms_n, cm = tonumber(ms), tonumber(m[4])
if cm and (ms_n < cm or (ms_n == cm and tonumber(seq) <= tonumber(m[5]))) then
  return { 0 }
end
local cnt = tonumber(m[9] or 0)
if cnt >= tonumber(max_messages) then
  return { 0 }
end
local bytes, limit = tonumber(m[12] or 0), tonumber(max_bytes) or 0
if limit > 0 and bytes + #message > limit then
  return { 0 }
end
if m[1] == 'member' and (actor == '' or redis.call('SISMEMBER', MEMBERS, actor) == 0) then
  return { 0 }
end
if keyed and redis.call('HEXISTS', IDEM, message_id) == 1 then
  return { 0 }
end
if redis.call('HSETNX', MSGS, message_id, message) == 0 then
  return { 0 }
end
-- The idempotency record, trimmed by age and count (at most 64 a call).
local fresh = false
if keyed then
  fresh = redis.call('EXISTS', IDEMAT) == 0
  redis.call('HSET', IDEM, message_id, fingerprint)
  redis.call('ZADD', IDEMAT, ms, message_id)
  local old = redis.call('ZRANGEBYSCORE', IDEMAT, '-inf', '(' .. string.format('%d', ms_n - window),
    'LIMIT', 0, 64)
  if #old > 0 then
    redis.call('HDEL', IDEM, unpack(old))
    redis.call('ZREM', IDEMAT, unpack(old))
  end
  local over = redis.call('ZCARD', IDEMAT) - idem_cap
  if over > 0 then
    local popped = redis.call('ZPOPMIN', IDEMAT, math.min(over, 64))
    for i = 1, #popped, 2 do
      redis.call('HDEL', IDEM, popped[i])
    end
  end
end

local eid_n = tonumber(m[8] or 0) + 1
local eid = tostring(eid_n)
redis.call('ZADD', ORDER, eid, message_id)
redis.call(publish, channel, event_head .. eid .. event_tail .. message .. '}')
local ttl = tonumber(m[3])
local deadline = ms_n + ttl
local assistant = m[2] == '1'
local hseq = tonumber(m[11] or 0)
local f = { 'eseq', eid, 'cnt', tostring(cnt + 1), 'cm', ms, 'cs', seq, 'last', ms,
  'bytes', tostring(bytes + #message) }
if human == '1' and assistant then
  hseq = eid_n
  f[13], f[14] = 'hseq', eid
end
if m[6] ~= part or m[7] ~= epoch then
  f[#f + 1], f[#f + 2] = 'fp', part
  f[#f + 1], f[#f + 2] = 'fe', epoch
end
-- The keys' TTL (the safety net without cleanup workers) moves in steps of ttl/8.
local xp = tonumber(m[10] or 0)
local grace = tonumber(grace_ms)
if xp < deadline + grace then
  xp = deadline + grace + math.floor(ttl / 8)
  f[#f + 1], f[#f + 2] = 'xp', tostring(xp)
  redis.call('HSET', META, unpack(f))
  for i = 1, #KEYS do
    redis.call('PEXPIREAT', KEYS[i], xp)
  end
else
  redis.call('HSET', META, unpack(f))
  if cnt == 0 then
    redis.call('PEXPIREAT', ORDER, xp)
    redis.call('PEXPIREAT', MSGS, xp)
  end
  if fresh then
    redis.call('PEXPIREAT', IDEM, xp)
    redis.call('PEXPIREAT', IDEMAT, xp)
  end
end
return { 1, eid_n, deadline, assistant and 1 or 0, hseq }
