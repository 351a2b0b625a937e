-- The assistant's answer in progress for one conversation: a lease, so one replica answers a
-- conversation at a time, and the text so far, for clients that join mid-answer.
-- KEYS[1] conversation meta  KEYS[2] conversation answer hash
-- ARGV[1] op  ARGV[2] owner (worker consumer name)  ARGV[3..] per op.
local op, owner = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if redis.call('EXISTS', KEYS[1]) == 0 then
  -- The conversation is gone (expired or deleted): nothing to answer, nothing to keep.
  redis.call('DEL', KEYS[2])
  return { 0 }
end

local function ttl_like_meta()
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then
    redis.call('PEXPIRE', KEYS[2], pttl)
  end
end

if op == 'acquire' then
  -- ARGV[3] lease ms  ARGV[4] new response id
  -- Returns { 1 } busy, or { 2, previous response id or '', hseq, aseq, assistant }.
  local cur = redis.call('HMGET', KEYS[2], 'owner', 'until', 'rid')
  if cur[1] and cur[1] ~= owner and tonumber(cur[2] or '0') > now then
    return { 1 }
  end
  local prev = ''
  if cur[1] and cur[1] ~= owner then
    prev = cur[3] or ''
  end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'owner', owner, 'until', now + tonumber(ARGV[3]), 'rid', ARGV[4], 'text', '', 'seq', -1)
  ttl_like_meta()
  local m = redis.call('HMGET', KEYS[1], 'hseq', 'aseq', 'assistant')
  return { 2, prev, tonumber(m[1] or '0'), tonumber(m[2] or '0'), tonumber(m[3] or '0') }
end

local mine = redis.call('HGET', KEYS[2], 'owner') == owner

if op == 'renew' then
  -- ARGV[3] lease ms. Returns { 1 } while still ours, { 0 } when lost.
  if not mine then
    return { 0 }
  end
  redis.call('HSET', KEYS[2], 'until', now + tonumber(ARGV[3]))
  return { 1 }
end

if op == 'progress' then
  -- ARGV[3] response id  ARGV[4] text so far  ARGV[5] last seq
  if not mine then
    return { 0 }
  end
  redis.call('HSET', KEYS[2], 'rid', ARGV[3], 'text', ARGV[4], 'seq', ARGV[5])
  return { 1 }
end

if op == 'release' then
  if mine then
    redis.call('DEL', KEYS[2])
  end
  return { 1 }
end

if op == 'mark' then
  -- ARGV[3] the newest human eventId now considered answered (give-ups, failed stores).
  local answered = tonumber(redis.call('HGET', KEYS[1], 'aseq') or '0')
  if tonumber(ARGV[3]) > answered then
    redis.call('HSET', KEYS[1], 'aseq', ARGV[3])
  end
  return { 1 }
end

if op == 'status' then
  -- Returns { 1, aseq, hseq }.
  local m = redis.call('HMGET', KEYS[1], 'aseq', 'hseq')
  return { 1, tonumber(m[1] or '0'), tonumber(m[2] or '0') }
end

return redis.error_reply('unknown op ' .. op)
