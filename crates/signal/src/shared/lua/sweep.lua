-- Run by every instance about once a second; whichever runs first does the work.
-- Instances whose lease expired (killed, cut off) have their peers put into grace; graces
-- that ended become peer-left timeout. ARGV[6] most graces ended per run.
for _, inst in ipairs(redis.call('SMEMBERS', P .. 'insts')) do
  if redis.call('EXISTS', P .. 'i:' .. inst) == 0 then
    for _, m in ipairs(redis.call('SMEMBERS', P .. 'ip:' .. inst)) do
      local room, peer = split(m)
      if redis.call('HGET', pkey(room, peer), 'inst') == inst then
        detach(room, peer, inst, NOW + GRACE_MS)
      end
    end
    redis.call('DEL', P .. 'ip:' .. inst, P .. 'x:' .. inst)
    redis.call('SREM', P .. 'insts', inst)
  end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'graces', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[6]))) do
  local room, peer = split(m)
  redis.call('ZREM', P .. 'graces', m)
  evict(room, peer, 'timeout')
  end_overflowed(room)
end
return {'ok', EVICTED}
