-- apply.lua — applies one command to one conversation, atomically.
--
-- KEYS (one hash tag, the conversation's): meta, order, msgs, events, members, answer, failed
-- ARGV[1]: the request, MessagePack — `ApplyRequest` in persistence/apply.rs:
--   op        'create' | 'send' | 'delete' | 'add_member'
--   entry     the command's stream entry id; commands apply in entry order, each once
--   after     (optional) the entry of the command before it in this call's batch, which must
--             be the conversation's cursor now (it failed otherwise: stop, keep the order)
--   part, epoch   the partition owner's fencing token
--   publish, channel   'PUBLISH' or 'SPUBLISH', and the conversation's channel
--   history, grace_ms  events kept for resume; how long keys outlive the inactivity deadline
--   event_head, event_tail   the event Rust encoded, split where the eventId goes
--   op-specific fields below.
-- Returns a MessagePack map — `ApplyReply`: outcome ('applied' | 'duplicate' | 'not_found' |
-- 'message_not_found' | 'forbidden' | 'full' | 'exists' | 'fenced' | 'out_of_order'),
-- event_id, deadline, assistant, hseq, kind, members, failed.
--
-- Meta fields: kind owner title assistant created ttl last deadline | eseq (last eventId)
-- mseq (last message order) cnt (messages held) | cur (last applied entry) fp fe (fence:
-- partition and epoch of the last writer) | hseq (newest human eventId) aseq (answered up to)
-- | xp (when the keys expire: refreshed only when the deadline gets close to it).

local req = cmsgpack.unpack(ARGV[1])
local META, ORDER, MSGS, EVENTS, MEMBERS, FAILED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7]

local function reply(t)
  return cmsgpack.pack(t)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Stream ids "ms-seq": is a later than b?
local function later(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end

local m = redis.call('HMGET', META, 'kind', 'assistant', 'ttl', 'cur', 'fp', 'fe',
  'eseq', 'mseq', 'cnt', 'xp', 'hseq', 'deadline')
local ckind, cur = m[1], m[4]
local assistant = m[2] == '1'
local ttl = tonumber(m[3] or '0')
local eseq, mseq, cnt = tonumber(m[7] or '0'), tonumber(m[8] or '0'), tonumber(m[9] or '0')
local xp, hseq = tonumber(m[10] or '0'), tonumber(m[11] or '0')
local member = ckind == 'member'

local function members_sorted()
  local list = redis.call('SMEMBERS', MEMBERS)
  table.sort(list)
  return list
end

-- What every answer about an existing conversation carries.
local function state(outcome)
  return { outcome = outcome, kind = ckind, assistant = assistant, hseq = hseq,
    deadline = tonumber(m[12] or '0'), event_id = 0 }
end

-- Fencing, exactly-once and order. nil: go ahead.
local function gate()
  if m[5] == req.part and req.epoch < tonumber(m[6] or '0') then
    return reply({ outcome = 'fenced' })
  end
  if cur and not later(req.entry, cur) then
    local r = state('duplicate')
    r.failed = redis.call('HGET', FAILED, req.entry) or nil
    if member and (req.op == 'create' or req.op == 'add_member') then
      r.members = members_sorted()
    end
    return reply(r)
  end
  if req.after and cur ~= req.after then
    return reply({ outcome = 'out_of_order' })
  end
  return nil
end

-- The fields every applied command writes back, and the keys' expiry. A key's TTL is the
-- safety net for deployments without cleanup workers; it is pushed out in steps of ttl/8, so
-- most writes touch no TTL at all. New keys get the current expiry.
local fields = {}
local function set(k, v)
  fields[#fields + 1] = k
  fields[#fields + 1] = v
end

local function finish(now, created)
  local deadline = now + ttl
  set('cur', req.entry)
  set('fp', req.part)
  set('fe', req.epoch)
  set('last', now)
  set('deadline', deadline)
  local refresh = xp < deadline + req.grace_ms
  if refresh then
    xp = deadline + req.grace_ms + math.floor(ttl / 8)
    set('xp', xp)
  end
  redis.call('HSET', META, unpack(fields))
  if refresh then
    for i = 1, #KEYS do
      if i ~= 6 then
        redis.call('PEXPIREAT', KEYS[i], xp)
      end
    end
  else
    for _, key in ipairs(created) do
      redis.call('PEXPIREAT', key, xp)
    end
  end
  return deadline
end

-- A refused command still moves the cursor (it was handled), and is remembered so that a
-- redelivery answers the same. The record keeps the last 64 refusals.
local function refuse(outcome)
  local created = {}
  if redis.call('HLEN', FAILED) >= 64 then
    redis.call('DEL', FAILED)
  end
  if redis.call('HSET', FAILED, req.entry, outcome) == 1 and redis.call('HLEN', FAILED) == 1 then
    created[1] = FAILED
  end
  local r = state(outcome)
  r.deadline = finish(now_ms(), created)
  return reply(r)
end

-- Appends an event to the history and publishes it, in one step: Pub/Sub order is eventId
-- order. A message event's history entry holds only the message id (the message is stored
-- once, in msgs); other events are stored whole.
local function emit(created, message_id)
  eseq = eseq + 1
  local ev = req.event_head .. eseq .. req.event_tail
  if eseq == 1 then
    created[#created + 1] = EVENTS
  end
  if message_id then
    redis.call('XADD', EVENTS, 'MAXLEN', '~', req.history, eseq .. '-1', 'm', message_id)
  else
    redis.call('XADD', EVENTS, 'MAXLEN', '~', req.history, eseq .. '-1', 'e', ev)
  end
  redis.call(req.publish, req.channel, ev)
  set('eseq', eseq)
  return eseq
end

if req.op == 'create' then
  -- owner ('' = an open conversation), title, assistant, ttl_ms, members
  if ckind then
    return gate() or reply(state('exists'))
  end
  ckind = req.owner == '' and 'open' or 'member'
  member = ckind == 'member'
  assistant = req.assistant
  ttl = req.ttl_ms
  local now = now_ms()
  set('kind', ckind)
  set('owner', req.owner)
  set('title', req.title)
  set('assistant', assistant and '1' or '0')
  set('created', now)
  set('ttl', ttl)
  set('eseq', 0)
  set('mseq', 0)
  set('cnt', 0)
  local created = { META }
  if member then
    redis.call('SADD', MEMBERS, req.owner, unpack(req.members))
    created[2] = MEMBERS
  end
  local r = state('applied')
  r.deadline = finish(now, created)
  if member then
    r.members = members_sorted()
  end
  return reply(r)
end

if not ckind then
  return reply({ outcome = 'not_found' })
end

if req.op == 'send' then
  -- actor ('' in open conversations, 'assistant' for the completion worker), message_id,
  -- message (JSON), human, max_messages, answers_up_to and done_event (assistant replies)
  if member and req.actor ~= 'assistant' and (req.actor == '' or redis.call('SISMEMBER', MEMBERS, req.actor) == 0) then
    return reply({ outcome = 'not_found' })
  end
  local stop = gate()
  if stop then
    return stop
  end
  if req.answers_up_to and req.answers_up_to > tonumber(redis.call('HGET', META, 'aseq') or '0') then
    set('aseq', req.answers_up_to)
  end
  if cnt >= req.max_messages then
    return refuse('full')
  end
  -- The message id is the gateway's: a second command carrying it (a resubmission) is the
  -- same message, so it is a duplicate too — and nothing is written before this check.
  if redis.call('HSETNX', MSGS, req.message_id, req.message) == 0 then
    redis.call('HSET', META, 'cur', req.entry)
    local r = state('duplicate')
    return reply(r)
  end
  local created = {}
  if cnt == 0 then
    created = { ORDER, MSGS }
  end
  mseq = mseq + 1
  redis.call('ZADD', ORDER, mseq, req.message_id)
  local eid = emit(created, req.message_id)
  set('mseq', mseq)
  set('cnt', cnt + 1)
  if req.human and assistant then
    hseq = eid
    set('hseq', eid)
  end
  if req.done_event then
    redis.call(req.publish, req.channel, req.done_event)
  end
  local r = state('applied')
  r.event_id = eid
  r.deadline = finish(now_ms(), created)
  return reply(r)
end

if req.op == 'delete' then
  -- actor, message_id. Only the author deletes in a member chat; the stored JSON starts
  -- {"messageId":"…","sender":"…" (Rust's field order), so no JSON decoding is needed.
  if member and (req.actor == '' or redis.call('SISMEMBER', MEMBERS, req.actor) == 0) then
    return reply({ outcome = 'not_found' })
  end
  local stop = gate()
  if stop then
    return stop
  end
  local stored = redis.call('HGET', MSGS, req.message_id)
  if not stored then
    return refuse('message_not_found')
  end
  if member and string.match(stored, '^{"messageId":"[^"]*","sender":"([^"]*)"') ~= req.actor then
    return refuse('forbidden')
  end
  redis.call('ZREM', ORDER, req.message_id)
  redis.call('HDEL', MSGS, req.message_id)
  set('cnt', cnt - 1)
  local created = {}
  local r = state('applied')
  r.event_id = emit(created)
  r.deadline = finish(now_ms(), created)
  return reply(r)
end

if req.op == 'add_member' then
  -- actor, username
  if not member or redis.call('SISMEMBER', MEMBERS, req.actor) == 0 then
    return reply({ outcome = 'not_found' })
  end
  local stop = gate()
  if stop then
    return stop
  end
  local created = {}
  local r = state('applied')
  if redis.call('SADD', MEMBERS, req.username) == 1 then
    r.event_id = emit(created)
  end
  r.deadline = finish(now_ms(), created)
  r.members = members_sorted()
  return reply(r)
end

return redis.error_reply('unknown op ' .. tostring(req.op))
