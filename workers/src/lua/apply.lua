-- Applies one command to one conversation, atomically. Keys share the {conversationId} tag:
-- KEYS[1] meta  KEYS[2] order  KEYS[3] msgs  KEYS[4] events  KEYS[5] applied  KEYS[6] members  KEYS[7] answer
-- ARGV[1] command id  ARGV[2] kind  ARGV[3] conversation id  ARGV[4] grace ms  ARGV[5] history length
-- ARGV[6] event channel  ARGV[7..] kind-specific (below).
-- Returns { status, body, eventId (0 if none), assistant (0/1), kind ('open'|'member'|''), deadline ms }.
-- A command id seen before returns the stored reply and writes nothing (at-least-once delivery).

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
  return deadline
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
  local prev = redis.call('HGET', KEYS[5], cmd)
  if prev then
    return { 201, prev, 0, tonumber(ARGV[10]), ARGV[8] == '' and 'open' or 'member', 0 }
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
  redis.call('HSET', KEYS[5], cmd, body)
  local deadline = touch(now, tonumber(ARGV[7]), ckind == 'member')
  return { 201, body, 0, tonumber(ARGV[10]), ckind, deadline }
end

local meta = redis.call('HMGET', KEYS[1], 'kind', 'assistant', 'ttl')
local ckind, assistant, ttl = meta[1], tonumber(meta[2] or '0'), tonumber(meta[3] or '0')
if not ckind then
  return not_found()
end
local member = ckind == 'member'
-- Records the reply under the command id, unless this command was applied before.
local function first_time(body)
  return redis.call('HSETNX', KEYS[5], cmd, body) == 1
end

if kind == 'send' then
  -- ARGV[7] message id  ARGV[8] message JSON  ARGV[9] actor ('' = open, 'assistant' = the completion
  -- worker)  ARGV[10] max messages  ARGV[11] '1' if a person wrote it  ARGV[12] for an assistant
  -- reply: the newest human eventId it answers ('' otherwise)  ARGV[13] assistant_done event JSON or ''
  local actor = ARGV[9]
  if member and actor ~= 'assistant' and (actor == '' or redis.call('SISMEMBER', KEYS[6], actor) == 0) then
    return not_found()
  end
  local mid = ARGV[7]
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[10]) then
    local prev = redis.call('HGET', KEYS[5], cmd)
    if prev then
      return { 201, prev, 0, 0, ckind, 0 }
    end
    if ARGV[12] ~= '' then
      redis.call('HSET', KEYS[1], 'aseq', ARGV[12])
    end
    return err(409, 'conversation_full', 'This conversation already holds the maximum of ' .. ARGV[10] .. ' messages')
  end
  local body = '{"message":"Message added successfully","messageId":"' .. mid .. '"}'
  if not first_time(body) then
    return { 201, body, 0, 0, ckind, 0 }
  end
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
  return { 201, body, eid, assistant, ckind, deadline }
end

if kind == 'delete' then
  -- ARGV[7] message id  ARGV[8] actor
  local mid, actor = ARGV[7], ARGV[8]
  if member and (actor == '' or redis.call('SISMEMBER', KEYS[6], actor) == 0) then
    return not_found()
  end
  local prev = redis.call('HGET', KEYS[5], cmd)
  if prev then
    return { 200, prev, 0, 0, ckind, 0 }
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
  redis.call('HSET', KEYS[5], cmd, body)
  local eid = emit('message_deleted', '"messageId":"' .. mid .. '"')
  local deadline = touch(now_ms(), ttl, member)
  return { 200, body, eid, 0, ckind, deadline }
end

if kind == 'add_member' then
  -- ARGV[7] username  ARGV[8] actor
  local user, actor = ARGV[7], ARGV[8]
  if ckind ~= 'member' or redis.call('SISMEMBER', KEYS[6], actor) == 0 then
    return not_found()
  end
  local prev = redis.call('HGET', KEYS[5], cmd)
  local eid, deadline = 0, 0
  if not prev and redis.call('SADD', KEYS[6], user) == 1 then
    eid = emit('member_joined', '"username":"' .. user .. '"')
    deadline = touch(now_ms(), ttl, member)
  end
  local members = redis.call('SMEMBERS', KEYS[6])
  table.sort(members)
  local body = cjson.encode({ conversationId = cid, members = members })
  if not prev then
    redis.call('HSET', KEYS[5], cmd, body)
  end
  return { 200, body, eid, 0, ckind, deadline }
end

return err(400, 'bad_command', 'Unknown command kind')
