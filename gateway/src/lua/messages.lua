-- messages.lua — one page of a conversation's stored messages, for a streamed
-- `GET /api/conversations/:id`: the gateway sends each page as it comes and reads the next,
-- so it never holds more than about one page per request.
--
-- KEYS (one hash tag): the order sorted set (message ids scored by their eventId) and the
-- msgs hash (id → message JSON).
-- ARGV[1]: the request, MessagePack — `PageRequest` in store.rs: after, upto (eventIds, as
-- decimal strings: the page holds messages with after < eventId <= upto), budget (bytes),
-- count (the most messages to look at).
-- Returns a flat array — the messages pass through without re-encoding:
--   { next, json, json, … }
-- next: the eventId the next page starts after (0: this was the last page). A page stops
-- before the message that would take it past budget, unless it is the page's first: a page
-- is at most budget bytes, or one message. Messages are read CHUNK at a time with one HMGET
-- (a call per message cost the GET more than the messages themselves), so at most CHUNK - 1
-- messages are read past the budget and dropped. A message deleted meanwhile is not there.
local req = cmsgpack.unpack(ARGV[1])
local ORDER, MSGS = KEYS[1], KEYS[2]
local budget, count = tonumber(req.budget), tonumber(req.count)
local ids = redis.call('ZRANGEBYSCORE', ORDER, '(' .. req.after, req.upto, 'WITHSCORES',
  'LIMIT', 0, count)
local CHUNK = 32
local out = { 0 }
local total = 0
local last = nil
for c = 1, #ids, 2 * CHUNK do
  local fields = {}
  for i = c, math.min(c + 2 * CHUNK - 1, #ids), 2 do
    fields[#fields + 1] = ids[i]
  end
  local values = redis.call('HMGET', MSGS, unpack(fields))
  for j = 1, #fields do
    local json = values[j]
    if json then
      if total > 0 and total + #json > budget then
        out[1] = last
        return out
      end
      out[#out + 1] = json
      total = total + #json
    end
    last = ids[c + 2 * j - 1]
  end
end
if #ids / 2 >= count then
  out[1] = last
end
return out
