-- history.lua — one page of a conversation's stored events, for a WebSocket resume.
--
-- KEYS[1] the conversation's events stream, KEYS[2] its msgs hash (one hash tag).
-- ARGV[1]: the request, MessagePack — `HistoryRequest` in store.rs: after (an eventId),
-- count (the most entries to return).
-- Returns a flat array — the page passes through without re-encoding:
--   { oldest kept eventId's entry id or '',  entry id, 'm', message JSON or false, … }
-- A history entry holds either a whole event ('e') or, for a message event, only its id
-- ('m'): the message itself is stored once, in msgs (false once it was deleted).
local req = cmsgpack.unpack(ARGV[1])
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local entries = redis.call('XRANGE', KEYS[1], '(' .. req.after .. '-1', '+', 'COUNT', req.count)
local out = { oldest[1] and oldest[1][1] or '' }
local ids, at = {}, {}
for _, entry in ipairs(entries) do
  local field, value = entry[2][1], entry[2][2]
  out[#out + 1] = entry[1]
  out[#out + 1] = field
  if field == 'm' then
    ids[#ids + 1] = value
    at[#at + 1] = #out + 1
    out[#out + 1] = false
  else
    out[#out + 1] = value
  end
end
if #ids > 0 then
  local msgs = redis.call('HMGET', KEYS[2], unpack(ids))
  for i = 1, #ids do
    out[at[i]] = msgs[i]
  end
end
return out
