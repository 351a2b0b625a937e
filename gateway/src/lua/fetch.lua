-- fetch.lua — reads a conversation in one round trip, messages in send order.
--
-- KEYS[1] meta, KEYS[2] order, KEYS[3] msgs, KEYS[4] members (one hash tag).
-- ARGV[1]: the request, MessagePack — `FetchRequest` in store.rs: actor (the signed-in
-- user, or '').
-- Returns false when the conversation does not exist, is past its inactivity deadline
-- (cleanup deletes it shortly), or is a member chat the actor is not in; else a flat array,
-- so the messages pass through without re-encoding:
--   { kind, title, assistant, lastEventId, created, last, { members… }, { message JSON… } }
local req = cmsgpack.unpack(ARGV[1])
local m = redis.call('HMGET', KEYS[1], 'kind', 'title', 'assistant', 'eseq', 'created', 'last', 'deadline')
if not m[1] then
  return false
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(m[7] or '0') <= now then
  return false
end
if m[1] == 'member' and (req.actor == '' or redis.call('SISMEMBER', KEYS[4], req.actor) == 0) then
  return false
end
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local msgs = {}
local chunk = 500
for i = 1, #ids, chunk do
  local part = redis.call('HMGET', KEYS[3], unpack(ids, i, math.min(i + chunk - 1, #ids)))
  for j = 1, #part do
    if part[j] then
      msgs[#msgs + 1] = part[j]
    end
  end
end
local members = {}
if m[1] == 'member' then
  members = redis.call('SMEMBERS', KEYS[4])
  table.sort(members)
end
return { m[1], m[2] or '', m[3] or '0', m[4] or '0', m[5] or '0', m[6] or '0', members, msgs }
