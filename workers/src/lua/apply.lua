-- apply.lua — applies one command to one conversation, atomically.
--
-- KEYS (one hash tag, the conversation's): meta, order, msgs, events, members, answer, failed
-- ARGV[1]: the request, MessagePack — `ApplyRequest` in persistence/apply.rs:
--   op         'create' | 'send' | 'delete' | 'add_member'
--   ms, seq    the command's stream entry id (ms-seq): commands apply in entry order, each
--              once; its ms is also the command's time (when Redis accepted it)
--   after_ms, after_seq  (optional) the entry of the previous command of this conversation in
--              the batch, which must be the cursor now (it did not apply otherwise: stop)
--   part, epoch   the partition owner's fencing token
--   publish, channel   'PUBLISH' or 'SPUBLISH', and the conversation's channel
--   history, grace_ms   non-message events kept for resume; how long keys outlive the deadline
--   event_head, event_tail   the event Rust encoded, split where the eventId goes
--   op-specific fields below.
-- Returns a MessagePack map — `ApplyReply`: outcome ('applied' | 'duplicate' | 'not_found' |
-- 'message_not_found' | 'forbidden' | 'full' | 'exists' | 'fenced' | 'out_of_order'),
-- event_id, deadline, assistant, hseq, members, failed.
--
-- Storage: a message is kept once, in msgs (id → JSON), and ordered in order (id scored by
-- its eventId). The events stream holds the other events (deletes, joins) for resume.
-- Meta fields: kind owner title assistant created ttl last deadline | eseq (last eventId)
-- cnt (messages held) | cm cs (cursor: the last applied entry) fp fe (fence: partition and
-- epoch of the last writer) | hseq (newest human eventId) aseq (answered up to) | xp (when
-- the keys expire; pushed out in steps of ttl/8, so most writes touch no TTL).

local req = cmsgpack.unpack(ARGV[1])
local META, ORDER, MSGS, EVENTS, MEMBERS, FAILED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7]

local m = redis.call('HMGET', META, 'kind', 'assistant', 'ttl', 'cm', 'cs', 'fp', 'fe',
  'eseq', 'cnt', 'xp', 'hseq', 'deadline')
local ckind = m[1]
local member = ckind == 'member'
local assistant = m[2] == '1'
local ttl = tonumber(m[3] or 0)
local eseq, cnt = tonumber(m[8] or 0), tonumber(m[9] or 0)
local xp, hseq = tonumber(m[10] or 0), tonumber(m[11] or 0)

local function members_sorted()
  local list = redis.call('SMEMBERS', MEMBERS)
  table.sort(list)
  return list
end

local function answer(outcome, event_id, deadline)
  return cmsgpack.pack({ outcome = outcome, event_id = event_id or 0,
    deadline = deadline or tonumber(m[12] or 0), assistant = assistant, hseq = hseq })
end

-- Fencing, exactly-once and order. nil: go ahead.
local function gate()
  if m[6] == req.part and req.epoch < tonumber(m[7] or 0) then
    return cmsgpack.pack({ outcome = 'fenced' })
  end
  local cm, cs = tonumber(m[4]), tonumber(m[5])
  if cm and (req.ms < cm or (req.ms == cm and req.seq <= cs)) then
    local r = { outcome = 'duplicate', deadline = tonumber(m[12] or 0), assistant = assistant,
      hseq = hseq, event_id = 0 }
    r.failed = redis.call('HGET', FAILED, req.ms .. '-' .. req.seq) or nil
    if member and (req.op == 'create' or req.op == 'add_member') then
      r.members = members_sorted()
    end
    return cmsgpack.pack(r)
  end
  if req.after_ms and (req.after_ms ~= cm or req.after_seq ~= cs) then
    return cmsgpack.pack({ outcome = 'out_of_order' })
  end
  return nil
end

-- Writes back the meta fields (with the cursor, fence and deadline) and the keys' expiry:
-- the TTL is the safety net for deployments without cleanup workers. `created` lists keys
-- this command brought into existence, which get the current expiry.
local function finish(fields, created)
  local deadline = req.ms + ttl
  local n = #fields
  fields[n + 1], fields[n + 2] = 'cm', req.ms
  fields[n + 3], fields[n + 4] = 'cs', req.seq
  fields[n + 5], fields[n + 6] = 'fp', req.part
  fields[n + 7], fields[n + 8] = 'fe', req.epoch
  fields[n + 9], fields[n + 10] = 'last', req.ms
  fields[n + 11], fields[n + 12] = 'deadline', deadline
  if xp < deadline + req.grace_ms then
    xp = deadline + req.grace_ms + math.floor(ttl / 8)
    fields[n + 13], fields[n + 14] = 'xp', xp
    redis.call('HSET', META, unpack(fields))
    for i = 1, #KEYS do
      if i ~= 6 then
        redis.call('PEXPIREAT', KEYS[i], xp)
      end
    end
  else
    redis.call('HSET', META, unpack(fields))
    for _, key in ipairs(created) do
      redis.call('PEXPIREAT', key, xp)
    end
  end
  return deadline
end

-- A refused command still moves the cursor (it was handled) but is no activity; it is
-- remembered, so that a redelivery answers the same. The record keeps the last 64 refusals.
local function refuse(outcome, fields)
  if redis.call('HLEN', FAILED) >= 64 then
    redis.call('DEL', FAILED)
  end
  if redis.call('HSET', FAILED, req.ms .. '-' .. req.seq, outcome) == 1 and xp > 0 then
    redis.call('PEXPIREAT', FAILED, xp)
  end
  local n = #fields
  fields[n + 1], fields[n + 2] = 'cm', req.ms
  fields[n + 3], fields[n + 4] = 'cs', req.seq
  fields[n + 5], fields[n + 6] = 'fp', req.part
  fields[n + 7], fields[n + 8] = 'fe', req.epoch
  redis.call('HSET', META, unpack(fields))
  return answer(outcome)
end

-- Appends a non-message event to the history and publishes it, in one step: Pub/Sub order
-- is eventId order.
local function emit(fields, created)
  eseq = eseq + 1
  local ev = req.event_head .. eseq .. req.event_tail
  redis.call('XADD', EVENTS, 'MAXLEN', '~', req.history, eseq .. '-1', 'e', ev)
  if eseq == 1 then
    created[#created + 1] = EVENTS
  end
  redis.call(req.publish, req.channel, ev)
  fields[#fields + 1], fields[#fields + 2] = 'eseq', eseq
  return eseq
end

if req.op == 'send' then
  -- actor ('' in open conversations, 'assistant' for the completion worker), message_id,
  -- message (JSON), human, max_messages, answers_up_to and done_event (assistant replies)
  if not ckind then
    return cmsgpack.pack({ outcome = 'not_found' })
  end
  if member and req.actor ~= 'assistant' and (req.actor == '' or redis.call('SISMEMBER', MEMBERS, req.actor) == 0) then
    return cmsgpack.pack({ outcome = 'not_found' })
  end
  local stop = gate()
  if stop then
    return stop
  end
  local fields = {}
  if req.answers_up_to and req.answers_up_to > tonumber(redis.call('HGET', META, 'aseq') or 0) then
    fields[1], fields[2] = 'aseq', req.answers_up_to
  end
  if cnt >= req.max_messages then
    return refuse('full', fields)
  end
  -- The message id is the gateway's: a second command carrying it (a resubmission) is the
  -- same message, so it is a duplicate too — and nothing was written before this check.
  if redis.call('HSETNX', MSGS, req.message_id, req.message) == 0 then
    redis.call('HSET', META, 'cm', req.ms, 'cs', req.seq)
    return answer('duplicate')
  end
  eseq = eseq + 1
  redis.call('ZADD', ORDER, eseq, req.message_id)
  redis.call(req.publish, req.channel, req.event_head .. eseq .. req.event_tail)
  local n = #fields
  fields[n + 1], fields[n + 2] = 'eseq', eseq
  fields[n + 3], fields[n + 4] = 'cnt', cnt + 1
  if req.human and assistant then
    hseq = eseq
    fields[n + 5], fields[n + 6] = 'hseq', eseq
  end
  if req.done_event then
    redis.call(req.publish, req.channel, req.done_event)
  end
  local created = {}
  if cnt == 0 then
    created = { ORDER, MSGS }
  end
  return answer('applied', eseq, finish(fields, created))
end

if req.op == 'create' then
  -- owner ('' = an open conversation), title, assistant, ttl_ms, members
  if ckind then
    return gate() or answer('exists')
  end
  ckind = req.owner == '' and 'open' or 'member'
  member = ckind == 'member'
  assistant = req.assistant
  ttl = req.ttl_ms
  local fields = { 'kind', ckind, 'owner', req.owner, 'title', req.title,
    'assistant', assistant and '1' or '0', 'created', req.ms, 'ttl', ttl, 'eseq', 0, 'cnt', 0 }
  local created = { META }
  if member then
    redis.call('SADD', MEMBERS, req.owner, unpack(req.members))
    created[2] = MEMBERS
  end
  local r = { outcome = 'applied', event_id = 0, assistant = assistant, hseq = 0 }
  r.deadline = finish(fields, created)
  if member then
    r.members = members_sorted()
  end
  return cmsgpack.pack(r)
end

if not ckind then
  return cmsgpack.pack({ outcome = 'not_found' })
end

if req.op == 'delete' then
  -- actor, message_id. Only the author deletes in a member chat; the stored JSON starts
  -- {"messageId":"…","sender":"…" (Rust's field order), so no JSON decoding is needed.
  if member and (req.actor == '' or redis.call('SISMEMBER', MEMBERS, req.actor) == 0) then
    return cmsgpack.pack({ outcome = 'not_found' })
  end
  local stop = gate()
  if stop then
    return stop
  end
  local stored = redis.call('HGET', MSGS, req.message_id)
  if not stored then
    return refuse('message_not_found', {})
  end
  if member and string.match(stored, '^{"messageId":"[^"]*","sender":"([^"]*)"') ~= req.actor then
    return refuse('forbidden', {})
  end
  redis.call('ZREM', ORDER, req.message_id)
  redis.call('HDEL', MSGS, req.message_id)
  local fields, created = { 'cnt', cnt - 1 }, {}
  local eid = emit(fields, created)
  return answer('applied', eid, finish(fields, created))
end

if req.op == 'add_member' then
  -- actor, username
  if not member or redis.call('SISMEMBER', MEMBERS, req.actor) == 0 then
    return cmsgpack.pack({ outcome = 'not_found' })
  end
  local stop = gate()
  if stop then
    return stop
  end
  local fields, created = {}, {}
  local eid = 0
  if redis.call('SADD', MEMBERS, req.username) == 1 then
    eid = emit(fields, created)
  end
  local r = { outcome = 'applied', event_id = eid, assistant = assistant, hseq = hseq }
  r.deadline = finish(fields, created)
  r.members = members_sorted()
  return cmsgpack.pack(r)
end

return redis.error_reply('unknown op ' .. tostring(req.op))
