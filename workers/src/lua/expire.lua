-- Deletes a conversation whose inactivity deadline has passed, with every key it owns.
-- KEYS: the eight conversation keys (see apply.lua). ARGV[1] conversation id, ARGV[2] event channel.
-- Returns { 0 } when the conversation is already gone, { 1, deadline } when it is not due yet
-- (activity moved its deadline), { 2, member... } when this call deleted it. Only one of any
-- number of concurrent callers sees 2, so each conversation expires once.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if not deadline then
  return { 0 }
end
if tonumber(deadline) > now then
  return { 1, deadline }
end
local members = redis.call('SMEMBERS', KEYS[6])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
redis.call('PUBLISH', ARGV[2], '{"type":"conversation_expired","conversationId":"' .. ARGV[1] .. '"}')
local out = { 2 }
for i = 1, #members do
  out[#out + 1] = members[i]
end
return out
