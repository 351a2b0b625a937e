-- apply.lua — applies one command to one conversation, atomically. (A plain new message
-- takes send.lua, a lighter copy of the send path below; what it declines comes here.)
--
-- KEYS (one hash tag, the conversation's): meta, order, msgs, events, members, answer, failed,
-- idem, idemat
-- ARGV[1]: the request, MessagePack — `ApplyRequest` in persistence/apply.rs, the same
-- fields for every op, those without a value left out (read as ''); numbers as decimal
-- strings:
--   op          'create' | 'send' | 'delete' | 'add_member'
--   ms, seq     the command's stream entry id (ms-seq): commands apply in entry order, each
--               once; ms is also the command's time (when Redis accepted it)
--   after_ms, after_seq   the entry of the previous command of this conversation in the batch,
--               which must be the cursor now (it did not apply otherwise: stop)
--   part, epoch the partition owner's fencing token
--   publish, channel   'PUBLISH' or 'SPUBLISH', and the conversation's channel
--   history, grace_ms  non-message events kept for resume; how long keys outlive the deadline
--   event_head, event_tail   the event Rust encoded, split where the eventId goes; a message
--               event ends with the message itself, which is not sent twice: its tail stops
--               before it, and the script appends message .. '}' 
--   prefix      the metadata line published before each event (publish time, trace id);
--               never stored
--   actor       the signed-in user ('' in open conversations, 'assistant' for replies)
--   message_id, message, human ('1' when a person wrote it), max_messages, max_bytes
--   (the most message bytes the conversation stores, '0' = no limit),
--   answers_up_to, done_event   (send; the last two for assistant replies)
--   owner ('' = open), title, assistant_arg ('1'), ttl_ms, members   (create)
--   username    (add_member)
--   fingerprint the request's fingerprint when its id (message_id, or the conversation's for
--               create) derives from the client's idempotency key ('' = no key)
--   idem_window, idem_max   how long (ms) and how many (per conversation) idempotency
--               records are kept ('0' = off)
-- Returns a MessagePack map — `ApplyReply`: outcome ('applied' | 'duplicate' | 'not_found' |
-- 'message_not_found' | 'forbidden' | 'full' | 'full_bytes' | 'exists' | 'key_reused' | 'fenced' |
-- 'out_of_order'),
-- event_id, deadline, assistant, hseq, members, failed.
--
-- Storage: a message is kept once, in msgs (id → JSON), and ordered in order (id scored by
-- its eventId). The events stream holds the other events (deletes, joins) for resume.
-- Meta fields: kind owner title assistant created ttl last (activity: the deadline is
-- last + ttl) | eseq (last eventId) cnt (messages held) bytes (their stored JSON, summed:
-- what max_bytes bounds) | cm cs (cursor: the last applied
-- entry) fp fe (fence: partition and epoch of the last writer) | hseq (newest human eventId)
-- aseq (answered up to) | xp (when the keys expire; pushed out in steps of ttl/8, so most
-- writes touch no TTL) | ik (the creation's fingerprint, when its id came from a key).
-- Idempotency: a message whose id derives from the client's key has a record in idem
-- (message id → fingerprint) and idemat (message id scored by its command's ms), trimmed by
-- age (idem_window) and count (idem_max, oldest first). A later command with the same id
-- (the client's retry) answers the first result, or 'key_reused' when the fingerprint differs.
-- Numbers travel as strings where they can: a Lua number in redis.call is formatted with
-- printf, which costs more than the command.

local req = cmsgpack.unpack(ARGV[1])
local op, prefix, ms, seq, after_ms, after_seq, part, epoch, publish, channel, history, grace_ms, event_head, event_tail, actor, message_id, message, human, max_messages, max_bytes, answers_up_to, done_event, owner, title, assistant_arg, ttl_ms, username, fingerprint, idem_window, idem_max = req.op or '', req.prefix or '', req.ms or '', req.seq or '', req.after_ms or '', req.after_seq or '', req.part or '', req.epoch or '', req.publish or '', req.channel or '', req.history or '', req.grace_ms or '', req.event_head or '', req.event_tail or '', req.actor or '', req.message_id or '', req.message or '', req.human or '', req.max_messages or '', req.max_bytes or '', req.answers_up_to or '', req.done_event or '', req.owner or '', req.title or '', req.assistant_arg or '', req.ttl_ms or '', req.username or '', req.fingerprint or '', req.idem_window or '', req.idem_max or ''
local META, ORDER, MSGS, EVENTS, MEMBERS, FAILED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7]
local IDEM, IDEMAT = KEYS[8], KEYS[9]

local m = redis.call('HMGET', META, 'kind', 'assistant', 'ttl', 'cm', 'cs', 'fp', 'fe',
  'eseq', 'cnt', 'xp', 'hseq', 'last', 'bytes', 'ik')
local ckind = m[1]
local member = ckind == 'member'

local assistant = m[2] == '1'
local ttl = tonumber(m[3] or 0)
local eseq, cnt = tonumber(m[8] or 0), tonumber(m[9] or 0)
local bytes = tonumber(m[13] or 0)
local xp, hseq = tonumber(m[10] or 0), tonumber(m[11] or 0)

local function members_sorted()
  local list = redis.call('SMEMBERS', MEMBERS)
  table.sort(list)
  return list
end

local function deadline_now()
  return m[12] and tonumber(m[12]) + ttl or 0
end

local function answer(outcome, event_id, deadline)
  return cmsgpack.pack({ outcome = outcome, event_id = event_id or 0,
    deadline = deadline or deadline_now(), assistant = assistant, hseq = hseq })
end

-- Fencing, exactly-once and order. nil: go ahead.
local ms_n, seq_n = tonumber(ms), tonumber(seq)
local grace = tonumber(grace_ms)

local function gate()
  if m[6] == part and tonumber(epoch) < tonumber(m[7] or 0) then
    return cmsgpack.pack({ outcome = 'fenced' })
  end
  local cm, cs = tonumber(m[4]), tonumber(m[5])
  if cm and (ms_n < cm or (ms_n == cm and seq_n <= cs)) then
    local r = { outcome = 'duplicate', deadline = deadline_now(), assistant = assistant,
      hseq = hseq, event_id = 0 }
    r.failed = redis.call('HGET', FAILED, ms .. '-' .. seq) or nil
    if member and (op == 'create' or op == 'add_member') then
      r.members = members_sorted()
    end
    return cmsgpack.pack(r)
  end
  if after_ms ~= '' and (after_ms ~= m[4] or after_seq ~= m[5]) then
    return cmsgpack.pack({ outcome = 'out_of_order' })
  end
  return nil
end

-- The cursor and, when it changed, the fence, into `fields`.
local function cursor(fields)
  local n = #fields
  fields[n + 1], fields[n + 2] = 'cm', ms
  fields[n + 3], fields[n + 4] = 'cs', seq
  if m[6] ~= part or m[7] ~= epoch then
    fields[n + 5], fields[n + 6] = 'fp', part
    fields[n + 7], fields[n + 8] = 'fe', epoch
  end
end

-- Writes back the meta fields (with the cursor, fence and activity) and the keys' expiry:
-- the TTL is the safety net for deployments without cleanup workers. `created` lists keys
-- this command brought into existence, which get the current expiry.
local function finish(fields, created)
  local deadline = ms_n + ttl
  cursor(fields)
  local n = #fields
  fields[n + 1], fields[n + 2] = 'last', ms
  if xp < deadline + grace then
    xp = deadline + grace + math.floor(ttl / 8)
    fields[n + 3], fields[n + 4] = 'xp', xp
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
  if redis.call('HSET', FAILED, ms .. '-' .. seq, outcome) == 1 and xp > 0 then
    redis.call('PEXPIREAT', FAILED, xp)
  end
  cursor(fields)
  redis.call('HSET', META, unpack(fields))
  return answer(outcome)
end

-- Idempotency records (see the header). The window and the cap are the worker's settings.
local window, idem_cap = tonumber(idem_window) or 0, tonumber(idem_max) or 0
local keyed = fingerprint ~= '' and window > 0 and idem_cap > 0

-- The record of message_id within the window: its fingerprint, or nil.
local function recorded()
  local fp = redis.call('HGET', IDEM, message_id)
  if fp and tonumber(redis.call('ZSCORE', IDEMAT, message_id) or 0) >= ms_n - window then
    return fp
  end
  return nil
end

-- Records message_id's fingerprint, then trims the records by age and count (a bounded
-- number per call, so lowering the cap never makes one call long).
local function remember(created)
  if redis.call('EXISTS', IDEMAT) == 0 then
    created[#created + 1] = IDEM
    created[#created + 1] = IDEMAT
  end
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

-- Appends a non-message event to the history and publishes it, in one step: Pub/Sub order
-- is eventId order.
local function emit(fields, created)
  eseq = eseq + 1
  local eid = tostring(eseq)
  local ev = event_head .. eid .. event_tail
  redis.call('XADD', EVENTS, 'MAXLEN', '~', history, eid .. '-1', 'e', ev)
  if eseq == 1 then
    created[#created + 1] = EVENTS
  end
  redis.call(publish, channel, prefix .. ev)
  fields[#fields + 1], fields[#fields + 2] = 'eseq', eid
  return eseq
end

if op == 'send' then
  -- actor ('' in open conversations, 'assistant' for the completion worker), message_id,
  -- message (JSON), human, max_messages, max_bytes, answers_up_to and done_event (assistant replies)
  if not ckind then
    return cmsgpack.pack({ outcome = 'not_found' })
  end
  if member and actor ~= 'assistant' and (actor == '' or redis.call('SISMEMBER', MEMBERS, actor) == 0) then
    return cmsgpack.pack({ outcome = 'not_found' })
  end
  local stop = gate()
  if stop then
    return stop
  end
  local fields = {}
  if answers_up_to ~= '' and tonumber(answers_up_to) > tonumber(redis.call('HGET', META, 'aseq') or 0) then
    fields[1], fields[2] = 'aseq', answers_up_to
  end
  -- The client's retry of a message it sent before (same key, so the same message id, in a
  -- new command): the first result, whatever happened since (even a delete, or the
  -- conversation filling up); the same key for another message is refused.
  if keyed then
    local fp = recorded()
    if fp and fp ~= fingerprint then
      return refuse('key_reused', fields)
    elseif fp then
      cursor(fields)
      redis.call('HSET', META, unpack(fields))
      return answer('duplicate')
    end
  end
  if cnt >= tonumber(max_messages) then
    return refuse('full', fields)
  end
  local limit = tonumber(max_bytes) or 0
  if limit > 0 and bytes + #message > limit then
    return refuse('full_bytes', fields)
  end
  -- The message id is the gateway's: a second command carrying it (a resubmission) is the
  -- same message, so it is a duplicate too — and nothing was written before this check.
  if redis.call('HSETNX', MSGS, message_id, message) == 0 then
    redis.call('HSET', META, 'cm', ms, 'cs', seq)
    return answer('duplicate')
  end
  eseq = eseq + 1
  local eid = tostring(eseq)
  redis.call('ZADD', ORDER, eid, message_id)
  redis.call(publish, channel, prefix .. event_head .. eid .. event_tail .. message .. '}')
  local n = #fields
  fields[n + 1], fields[n + 2] = 'eseq', eid
  fields[n + 3], fields[n + 4] = 'cnt', tostring(cnt + 1)
  fields[n + 5], fields[n + 6] = 'bytes', tostring(bytes + #message)
  if human == '1' and assistant then
    hseq = eseq
    fields[n + 7], fields[n + 8] = 'hseq', eid
  end
  if done_event ~= '' then
    redis.call(publish, channel, prefix .. done_event)
  end
  local created = {}
  if cnt == 0 then
    created = { ORDER, MSGS }
  end
  if keyed then
    remember(created)
  end
  return answer('applied', eseq, finish(fields, created))
end

if op == 'create' then
  -- owner ('' = an open conversation), title, assistant, ttl_ms, members
  if ckind then
    local stop = gate()
    if stop then
      return stop
    end
    -- The id came from the client's key: this is its retry (the same request: the first
    -- result) or a reuse of the key for another request (refused).
    if fingerprint ~= '' then
      if m[14] ~= fingerprint then
        return refuse('key_reused', {})
      end
      local fields = {}
      cursor(fields)
      redis.call('HSET', META, unpack(fields))
      local r = { outcome = 'duplicate', event_id = 0, deadline = deadline_now(),
        assistant = assistant, hseq = hseq }
      if member then
        r.members = members_sorted()
      end
      return cmsgpack.pack(r)
    end
    return answer('exists')
  end
  ckind = owner == '' and 'open' or 'member'
  member = ckind == 'member'
  assistant = assistant_arg == '1'
  ttl = tonumber(ttl_ms)
  local fields = { 'kind', ckind, 'owner', owner, 'title', title,
    'assistant', assistant and '1' or '0', 'created', ms, 'ttl', ttl_ms, 'eseq', '0', 'cnt', '0' }
  if fingerprint ~= '' then
    fields[#fields + 1], fields[#fields + 2] = 'ik', fingerprint
  end
  local created = { META }
  if member then
    redis.call('SADD', MEMBERS, owner, unpack(req.members or {}))
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

if op == 'delete' then
  -- actor, message_id. Only the author deletes in a member chat; the stored JSON starts
  -- {"messageId":"…","sender":"…" (Rust's field order), so no JSON decoding is needed.
  if member and (actor == '' or redis.call('SISMEMBER', MEMBERS, actor) == 0) then
    return cmsgpack.pack({ outcome = 'not_found' })
  end
  local stop = gate()
  if stop then
    return stop
  end
  local stored = redis.call('HGET', MSGS, message_id)
  if not stored then
    return refuse('message_not_found', {})
  end
  if member and string.match(stored, '^{"messageId":"[^"]*","sender":"([^"]*)"') ~= actor then
    return refuse('forbidden', {})
  end
  redis.call('ZREM', ORDER, message_id)
  redis.call('HDEL', MSGS, message_id)
  local fields, created = { 'cnt', tostring(cnt - 1),
    'bytes', tostring(math.max(0, bytes - #stored)) }, {}
  local eid = emit(fields, created)
  return answer('applied', eid, finish(fields, created))
end

if op == 'add_member' then
  -- actor, username
  if not member or redis.call('SISMEMBER', MEMBERS, actor) == 0 then
    return cmsgpack.pack({ outcome = 'not_found' })
  end
  local stop = gate()
  if stop then
    return stop
  end
  local fields, created = {}, {}
  local eid = 0
  if redis.call('SADD', MEMBERS, username) == 1 then
    eid = emit(fields, created)
  end
  local r = { outcome = 'applied', event_id = eid, assistant = assistant, hseq = hseq }
  r.deadline = finish(fields, created)
  r.members = members_sorted()
  return cmsgpack.pack(r)
end

return redis.error_reply('unknown op ' .. tostring(op))
