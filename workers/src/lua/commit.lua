-- commit.lua — records a partition's progress, fenced: only the lease holder commits.
--
-- KEYS (one hash tag, the partition's): lease, commands stream, completion jobs, cleanup
-- index, dead letters.
-- ARGV[1]: the request, MessagePack — `CommitRequest` in persistence/commit.rs:
--   owner, epoch   the fencing token from the lease
--   offset         (optional) every entry up to here is done: stored as the committed offset,
--                  and trimmed from the stream (exactly: the backlog cap counts XLEN)
--   jobs           completion jobs (JSON) to append; jobs_max bounds that stream
--   index          { conversation id, deadline ms, … } for the cleanup index
--   dead           { entry, reason, payload, … } for the dead-letter stream; dead_max bounds it
-- Returns a MessagePack map — `CommitReply`: ok (false: the lease is not ours any more) and
-- backlog (entries still in the stream).
local req = cmsgpack.unpack(ARGV[1])
local LEASE, STREAM, JOBS, INDEX, DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local l = redis.call('HMGET', LEASE, 'owner', 'epoch')
if l[1] ~= req.owner or tonumber(l[2] or '0') ~= req.epoch then
  return cmsgpack.pack({ ok = false, backlog = 0 })
end
if req.offset then
  redis.call('HSET', LEASE, 'offset', req.offset)
  local ms, seq = string.match(req.offset, '^(%d+)-(%d+)$')
  redis.call('XTRIM', STREAM, 'MINID', ms .. '-' .. (tonumber(seq) + 1))
end
for _, job in ipairs(req.jobs or {}) do
  redis.call('XADD', JOBS, 'MAXLEN', '~', req.jobs_max, '*', 'j', job)
end
local index = req.index or {}
for i = 1, #index, 2 do
  redis.call('ZADD', INDEX, index[i + 1], index[i])
end
local dead = req.dead or {}
for i = 1, #dead, 3 do
  redis.call('XADD', DEAD, 'MAXLEN', '~', req.dead_max, '*', 'stream', STREAM, 'entry', dead[i],
    'reason', dead[i + 1], 'payload', dead[i + 2])
end
return cmsgpack.pack({ ok = true, backlog = redis.call('XLEN', STREAM) })
