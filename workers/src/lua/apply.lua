-- Applies one command to one conversation, atomically. Keys share the {conversationId} tag:
-- KEYS[1] meta  KEYS[2] order  KEYS[3] msgs  KEYS[4] events  KEYS[5] applied  KEYS[6] members  KEYS[7] answer
-- KEYS[8] applied (previous generation)
-- ARGV[1] command id  ARGV[2] kind  ARGV[3] conversation id  ARGV[4] grace ms  ARGV[5] history length
-- ARGV[6] event channel  ARGV[7..] kind-specific (below).
-- Returns { status, body, eventId (0 if none), assistant (0/1), kind ('open'|'member'|''), deadline ms }.
-- A command id seen before returns the stored reply and writes nothing (at-least-once delivery),
-- with the eventId and deadline it produced, so the worker can redo its idempotent side effects.
-- The `applied` record is bounded: past APPLIED_ROTATE entries it becomes the previous
-- generation (KEYS[8]) and a fresh one starts, so ids are remembered for thousands of commands —
-- far longer than any redelivery window — without growing forever.

local cmd, kind, cid = ARGV[1], ARGV[2], ARGV[3]
local grace, hist, channel = tonumber(ARGV[4]), ARGV[5], ARGV[6]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function err(status, code, message)
  return { status, cjson.encode({ error = { code = code, message = message } }), 0, 0, '', 0 }
end

local function not_found()
  return err(404, 'not_found', 'Conversation not found')
end

-- Bumps the activity deadline and the keys' own TTL (the safety net without cleanup workers).
-- The answer key keeps its own TTL (see answer.lua); the members set exists only in member chats.
local function touch(now, ttl, member)
  local deadline = now + ttl
  redis.call('HSET', KEYS[1], 'last', now, 'deadline', deadline)
  local last = member and 6 or 5
  for i = 1, last do
    redis.call('PEXPIRE', KEYS[i], ttl + grace)
  end
  redis.call('PEXPIRE', KEYS[8], ttl + grace)
  return deadline
end

local APPLIED_ROTATE = 2000

-- The stored record of a command applied before, or nil.
local function previous()
  return redis.call('HGET', KEYS[5], cmd) or redis.call('HGET', KEYS[8], cmd)
end

-- Remembers a command's reply with what it produced: 'eventId|assistant|deadline|body'.
local function record(eid, flag, deadline, body)
  redis.call('HSET', KEYS[5], cmd, eid .. '|' .. flag .. '|' .. deadline .. '|' .. body)
  if redis.call('HLEN', KEYS[5]) > APPLIED_ROTATE then
    redis.call('RENAME', KEYS[5], KEYS[8])
  end
end

-- The answer to a command applied before.
local function replay(status, prev, ckind)
  local e, a, d, body = string.match(prev, '^(%d+)|(%d+)|(%d+)|(.*)$')
  if not e then
    return { status, prev, 0, 0, ckind, 0 }
  end
  return { status, body, tonumber(e), tonumber(a), ckind, tonumber(d) }
end

-- Appends an event to the bounded history and publishes it, in one step: Pub/Sub order is
-- eventId order. `body` is the event JSON after `"eventId":N,`.
local function emit(typ, body)
  local eid = redis.call('HINCRBY', KEYS[1], 'eseq', 1)
  local ev = '{"type":"' .. typ .. '","conversationId":"' .. cid .. '","eventId":' .. eid .. ',' .. body .. '}'
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', hist, eid .. '-1', 'e', ev)
  redis.call('PUBLISH', channel, ev)
  return eid
end

if kind == 'create' then
  -- ARGV[7] ttl ms  ARGV[8] owner ('' = open)  ARGV[9] title  ARGV[10] assistant '0'|'1'  ARGV[11..] members
  local prev = previous()
  if prev then
    return replay(201, prev, ARGV[8] == '' and 'open' or 'member')
  end
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return err(409, 'conflict', 'Conversation already exists')
  end
  local now = now_ms()
  local ckind = ARGV[8] == '' and 'open' or 'member'
  redis.call('HSET', KEYS[1], 'kind', ckind, 'owner', ARGV[8], 'title', ARGV[9], 'assistant', ARGV[10],
    'created', now, 'ttl', ARGV[7], 'eseq', 0, 'mseq', 0)
  if ckind == 'member' then
    redis.call('SADD', KEYS[6], ARGV[8])
    for i = 11, #ARGV do
      redis.call('SADD', KEYS[6], ARGV[i])
    end
  end
  local body = '{"conversationId":"' .. cid .. '"}'
  local deadline = touch(now, tonumber(ARGV[7]), ckind == 'member')
  record(0, ARGV[10], deadline, body)
  return { 201, body, 0, tonumber(ARGV[10]), ckind, deadline }
end

local meta = redis.call('HMGET', KEYS[1], 'kind', 'assistant', 'ttl')
local ckind, assistant, ttl = meta[1], tonumber(meta[2] or '0'), tonumber(meta[3] or '0')
if not ckind then
  return not_found()
end
local member = ckind == 'member'

if kind == 'send' then
  -- ARGV[7] message id  ARGV[8] message JSON  ARGV[9] actor ('' = open, 'assistant' = the completion
  -- worker)  ARGV[10] max messages  ARGV[11] '1' if a person wrote it  ARGV[12] for an assistant
  -- reply: the newest human eventId it answers ('' otherwise)  ARGV[13] assistant_done event JSON or ''
  local actor = ARGV[9]
  if member and actor ~= 'assistant' and (actor == '' or redis.call('SISMEMBER', KEYS[6], actor) == 0) then
    return not_found()
  end
  local mid = ARGV[7]
  local prev = previous()
  if prev then
    return replay(201, prev, ckind)
  end
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[10]) then
    if ARGV[12] ~= '' then
      redis.call('HSET', KEYS[1], 'aseq', ARGV[12])
    end
    return err(409, 'conversation_full', 'This conversation already holds the maximum of ' .. ARGV[10] .. ' messages')
  end
  local body = '{"message":"Message added successfully","messageId":"' .. mid .. '"}'
  local seq = redis.call('HINCRBY', KEYS[1], 'mseq', 1)
  redis.call('ZADD', KEYS[2], seq, mid)
  redis.call('HSET', KEYS[3], mid, ARGV[8])
  local eid = emit('message', '"message":' .. ARGV[8])
  if ARGV[11] == '1' and assistant == 1 then
    redis.call('HSET', KEYS[1], 'hseq', eid)
  end
  if ARGV[12] ~= '' then
    local answered = tonumber(redis.call('HGET', KEYS[1], 'aseq') or '0')
    if tonumber(ARGV[12]) > answered then
      redis.call('HSET', KEYS[1], 'aseq', ARGV[12])
    end
  end
  if ARGV[13] ~= '' then
    redis.call('PUBLISH', channel, ARGV[13])
  end
  local deadline = touch(now_ms(), ttl, member)
  record(eid, assistant, deadline, body)
  return { 201, body, eid, assistant, ckind, deadline }
end

if kind == 'delete' then
  -- ARGV[7] message id  ARGV[8] actor
  local mid, actor = ARGV[7], ARGV[8]
  if member and (actor == '' or redis.call('SISMEMBER', KEYS[6], actor) == 0) then
    return not_found()
  end
  local prev = previous()
  if prev then
    return replay(200, prev, ckind)
  end
  local stored = redis.call('HGET', KEYS[3], mid)
  if not stored then
    return err(404, 'not_found', 'Message not found')
  end
  if member then
    local ok, msg = pcall(cjson.decode, stored)
    if ok and msg.sender ~= actor then
      return err(403, 'forbidden', 'Only the author can delete a message')
    end
  end
  redis.call('ZREM', KEYS[2], mid)
  redis.call('HDEL', KEYS[3], mid)
  local body = '{"message":"Message deleted successfully"}'
  local eid = emit('message_deleted', '"messageId":"' .. mid .. '"')
  local deadline = touch(now_ms(), ttl, member)
  record(eid, 0, deadline, body)
  return { 200, body, eid, 0, ckind, deadline }
end

if kind == 'add_member' then
  -- ARGV[7] username  ARGV[8] actor
  local user, actor = ARGV[7], ARGV[8]
  if ckind ~= 'member' or redis.call('SISMEMBER', KEYS[6], actor) == 0 then
    return not_found()
  end
  local prev = previous()
  if prev then
    return replay(200, prev, ckind)
  end
  local eid, deadline = 0, 0
  if redis.call('SADD', KEYS[6], user) == 1 then
    eid = emit('member_joined', '"username":"' .. user .. '"')
    deadline = touch(now_ms(), ttl, member)
  end
  local members = redis.call('SMEMBERS', KEYS[6])
  table.sort(members)
  local body = cjson.encode({ conversationId = cid, members = members })
  record(eid, 0, deadline, body)
  return { 200, body, eid, 0, ckind, deadline }
end

return err(400, 'bad_command', 'Unknown command kind')
