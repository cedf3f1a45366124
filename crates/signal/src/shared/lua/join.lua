-- A new peer takes its reserved slot: tells the others, returns them for its welcome.
-- ARGV[6] room, [7] peer, [8] meta (JSON object), [9] resume token, [10] instance,
-- [11] address, [12] reservation id, [13] capacity.
local room, peer, meta, inst = ARGV[6], ARGV[7], ARGV[8], ARGV[10]
if redis.call('ZREM', vkey(room), ARGV[12]) == 0 and not has_room(room, tonumber(ARGV[13])) then
  return {'full'}
end
local others = redis.call('HGETALL', mkey(room))
local body = '{"type":"peer-joined","peer_id":"' .. peer .. '","meta":' .. meta .. '}'
for i = 1, #others, 2 do deliver(room, others[i], body) end
redis.call('HSET', mkey(room), peer, meta)
redis.call('HSET', pkey(room, peer), 'ep', 1, 'seq', 0, 'lb', 0, 'tok', ARGV[9],
  'addr', ARGV[11], 'jn', math.floor(NOW / 1000), 'mi', 0)
redis.call('SET', P .. 't:' .. ARGV[9], member(room, peer))
attach(room, peer, inst)
end_overflowed(room)
return {'ok', others, EVICTED}
