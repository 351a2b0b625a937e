-- answer.lua — the assistant's answer in progress for one conversation: a lease, so one
-- replica answers a conversation at a time, and the text so far, for clients that join
-- mid-answer.
--
-- KEYS[1] the conversation's meta hash, KEYS[2] its answer hash (one hash tag).
-- ARGV[1]: the request, MessagePack — `AnswerRequest` in completion/lease.rs:
--   op      'acquire' | 'renew' | 'progress' | 'release' | 'mark' | 'status'
--   owner   the replica's consumer name
--   lease_ms (acquire, renew), rid (acquire, progress: the response id), text and seq
--   (progress: the text so far and the last delta's seq), up_to (mark: the newest human
--   eventId now considered answered — give-ups, failed stores)
-- Returns a MessagePack map — `AnswerReply`:
--   gone    the conversation does not exist (nothing to answer, nothing kept)
--   ok      acquire: the lease is ours now; renew/progress: it still is
--   busy    acquire: another replica holds a live lease
--   previous  acquire: the response id of a lapsed answer taken over (announce a restart)
--   hseq, aseq, assistant   acquire/status: newest human eventId, answered up to, enabled
local req = cmsgpack.unpack(ARGV[1])
local META, ANSWER = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if redis.call('EXISTS', META) == 0 then
  redis.call('DEL', ANSWER)
  return cmsgpack.pack({ gone = true })
end

local function progress()
  local m = redis.call('HMGET', META, 'hseq', 'aseq', 'assistant')
  return tonumber(m[1] or '0'), tonumber(m[2] or '0'), m[3] == '1'
end

if req.op == 'acquire' then
  local cur = redis.call('HMGET', ANSWER, 'owner', 'until', 'rid')
  if cur[1] and cur[1] ~= req.owner and tonumber(cur[2] or '0') > now then
    return cmsgpack.pack({ busy = true })
  end
  local previous = nil
  if cur[1] and cur[1] ~= req.owner and cur[3] and cur[3] ~= '' then
    previous = cur[3]
  end
  redis.call('DEL', ANSWER)
  redis.call('HSET', ANSWER, 'owner', req.owner, 'until', now + req.lease_ms, 'rid', req.rid,
    'text', '', 'seq', -1)
  local pttl = redis.call('PTTL', META)
  if pttl > 0 then
    redis.call('PEXPIRE', ANSWER, pttl)
  end
  local hseq, aseq, assistant = progress()
  return cmsgpack.pack({ ok = true, previous = previous, hseq = hseq, aseq = aseq,
    assistant = assistant })
end

if req.op == 'status' then
  local hseq, aseq = progress()
  return cmsgpack.pack({ ok = true, hseq = hseq, aseq = aseq })
end

if req.op == 'mark' then
  local answered = tonumber(redis.call('HGET', META, 'aseq') or '0')
  if req.up_to > answered then
    redis.call('HSET', META, 'aseq', req.up_to)
  end
  return cmsgpack.pack({ ok = true })
end

local mine = redis.call('HGET', ANSWER, 'owner') == req.owner

if req.op == 'renew' then
  if mine then
    redis.call('HSET', ANSWER, 'until', now + req.lease_ms)
  end
  return cmsgpack.pack({ ok = mine })
end

if req.op == 'progress' then
  if mine then
    redis.call('HSET', ANSWER, 'rid', req.rid, 'text', req.text, 'seq', req.seq)
  end
  return cmsgpack.pack({ ok = mine })
end

if req.op == 'release' then
  if mine then
    redis.call('DEL', ANSWER)
  end
  return cmsgpack.pack({ ok = true })
end

return redis.error_reply('unknown op ' .. tostring(req.op))
