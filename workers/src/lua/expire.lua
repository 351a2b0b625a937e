-- expire.lua — deletes a conversation whose inactivity deadline has passed, with every key.
--
-- KEYS: the conversation's keys (keys::conv_keys): meta, order, msgs, events, members, answer,
-- failed.
-- ARGV[1]: the request, MessagePack — `ExpireRequest` in cleanup.rs: publish ('PUBLISH' or
-- 'SPUBLISH'), channel, event (the conversation_expired JSON Rust encoded).
-- Returns a MessagePack map — `ExpireReply`: outcome 'gone' (already deleted), 'not_due'
-- (activity moved the deadline, given back as `deadline`) or 'expired' (this call deleted it;
-- `members` lists a member chat's members). Only one of any number of concurrent callers
-- sees 'expired', so each conversation expires once.
local req = cmsgpack.unpack(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('HMGET', KEYS[1], 'last', 'ttl')
if not m[1] then
  return cmsgpack.pack({ outcome = 'gone' })
end
local deadline = tonumber(m[1]) + tonumber(m[2] or 0)
if deadline > now then
  return cmsgpack.pack({ outcome = 'not_due', deadline = deadline })
end
local members = redis.call('SMEMBERS', KEYS[5])
redis.call('DEL', unpack(KEYS))
redis.call(req.publish, req.channel, req.event)
local out = { outcome = 'expired' }
if #members > 0 then
  out.members = members
end
return cmsgpack.pack(out)
