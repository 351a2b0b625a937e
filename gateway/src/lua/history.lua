-- history.lua — one page of a conversation's stored events after an eventId, for a resume.
--
-- KEYS (one hash tag): the events stream (non-message events), the order sorted set
-- (message ids scored by their eventId), the msgs hash (id → message JSON) and the meta hash.
-- ARGV[1]: the request, MessagePack — `HistoryRequest` in store.rs: after (an eventId),
-- count (the most entries of each kind to read).
-- Returns a flat array — the page passes through without re-encoding:
--   { trimmed, next, last, eventId, 'm' | 'e', payload, … }
-- trimmed: the newest eventId the bounded events stream dropped (0 if none): a resume from
-- before it has lost events. next: where the next page starts (0: this was the last).
-- last: the conversation's newest eventId. Each event is a message's
-- JSON ('m', wrapped into a message event by the gateway) or a whole event ('e'), in
-- eventId order. A deleted message is gone from both order and msgs (its delete is an event).
local req = cmsgpack.unpack(ARGV[1])
local EVENTS, ORDER, MSGS, META = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- Trimming drops the oldest events: everything before the first kept entry (or, once all
-- were dropped, up to the last one added) is gone when more were added than are kept.
local trimmed = 0
local info = redis.pcall('XINFO', 'STREAM', EVENTS)
if type(info) == 'table' and not info.err then
  local f = {}
  for i = 1, #info, 2 do
    f[info[i]] = info[i + 1]
  end
  if tonumber(f['entries-added'] or 0) > tonumber(f['length'] or 0) then
    local eid = function(id) return tonumber(string.match(id or '', '^(%d+)-')) or 0 end
    if tonumber(f['length']) > 0 then
      trimmed = eid(f['recorded-first-entry-id']) - 1
    else
      trimmed = eid(f['last-generated-id'])
    end
  end
end
local msgs = redis.call('ZRANGEBYSCORE', ORDER, '(' .. req.after, '+inf', 'WITHSCORES', 'LIMIT', 0, req.count)
local events = redis.call('XRANGE', EVENTS, '(' .. req.after .. '-1', '+', 'COUNT', req.count)
-- A full list may continue past its last item: the page ends where both are complete.
local bound = math.huge
local more = 0
if #msgs / 2 >= req.count then
  bound = tonumber(msgs[#msgs])
  more = 1
end
if #events >= req.count then
  local last = tonumber(string.match(events[#events][1], '^(%d+)-'))
  if last < bound then
    bound = last
  end
  more = 1
end
local ids = {}
for i = 1, #msgs, 2 do
  ids[#ids + 1] = msgs[i]
end
local bodies = {}
if #ids > 0 then
  bodies = redis.call('HMGET', MSGS, unpack(ids))
end
local out = { trimmed, more == 1 and bound or 0, tonumber(redis.call('HGET', META, 'eseq') or 0) }
local mi, ei = 1, 1
while true do
  local meid = msgs[2 * mi] and tonumber(msgs[2 * mi]) or math.huge
  local e = events[ei]
  local eeid = e and tonumber(string.match(e[1], '^(%d+)-')) or math.huge
  local eid = math.min(meid, eeid)
  if eid == math.huge or eid > bound then
    break
  end
  if meid < eeid then
    if bodies[mi] then
      out[#out + 1] = meid
      out[#out + 1] = 'm'
      out[#out + 1] = bodies[mi]
    end
    mi = mi + 1
  else
    out[#out + 1] = eeid
    out[#out + 1] = 'e'
    out[#out + 1] = e[2][2]
    ei = ei + 1
  end
end
return out
