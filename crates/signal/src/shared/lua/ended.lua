-- A connection ended: in grace ('dropped') or gone for good with a peer-left reason.
-- ARGV[6] room, [7] peer, [8] epoch, [9] instance, [10] dropped|left|error|kicked.
local room, peer, inst, how = ARGV[6], ARGV[7], ARGV[9], ARGV[10]
local f = redis.call('HMGET', pkey(room, peer), 'ep', 'inst')
if f[1] ~= ARGV[8] then return {'stale', EVICTED} end
if how == 'dropped' then
  if f[2] == inst then detach(room, peer, inst, NOW + GRACE_MS) end
else
  evict(room, peer, how)
  end_overflowed(room)
end
return {'ok', EVICTED}
