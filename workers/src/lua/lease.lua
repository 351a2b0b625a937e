-- lease.lua — ownership of one partition: one owner at a time, fenced by an epoch.
--
-- KEYS[1]: the partition's lease hash (owner, epoch, until, offset), in the partition's slot.
-- ARGV[1]: the request, MessagePack — `LeaseRequest` in persistence/lease.rs:
--   op     'acquire' | 'renew' | 'release' | 'status'
--   owner  the replica's name; epoch (renew, release); ttl_ms (acquire, renew)
-- Returns a MessagePack map — `LeaseReply`:
--   ok      acquire: the lease is now ours; renew/release: it was still ours
--   epoch   acquire: the new epoch (every acquisition raises it, so writes of an earlier owner
--           are refused wherever this one has written)
--   offset  acquire: the committed offset to read after ('0-0' for a new partition)
--   owner, until_ms   status: who holds it until when ('' when free)
local req = cmsgpack.unpack(ARGV[1])
local LEASE = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local l = redis.call('HMGET', LEASE, 'owner', 'epoch', 'until', 'offset')
local owner, epoch, until_ms = l[1] or '', tonumber(l[2] or '0'), tonumber(l[3] or '0')
local held = owner ~= '' and until_ms > now

if req.op == 'status' then
  if not held then
    owner = ''
  end
  return cmsgpack.pack({ ok = true, owner = owner, until_ms = until_ms, epoch = epoch })
end

if req.op == 'acquire' then
  if held and owner ~= req.owner then
    return cmsgpack.pack({ ok = false, owner = owner })
  end
  epoch = epoch + 1
  redis.call('HSET', LEASE, 'owner', req.owner, 'epoch', epoch, 'until', now + req.ttl_ms)
  return cmsgpack.pack({ ok = true, epoch = epoch, offset = l[4] or '0-0' })
end

local mine = owner == req.owner and epoch == req.epoch

if req.op == 'renew' then
  if mine and until_ms > now then
    redis.call('HSET', LEASE, 'until', now + req.ttl_ms)
    return cmsgpack.pack({ ok = true })
  end
  return cmsgpack.pack({ ok = false, owner = owner })
end

if req.op == 'release' then
  if mine then
    redis.call('HSET', LEASE, 'owner', '', 'until', 0)
  end
  return cmsgpack.pack({ ok = mine })
end

return redis.error_reply('unknown op ' .. tostring(req.op))
