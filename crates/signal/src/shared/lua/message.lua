-- One message of a connection, in the order it sent them (the caller awaits each).
-- ARGV[6] room, [7] peer, [8] epoch, [9] instance, [10] op: self (to the sender: pong,
-- errors, ice-servers), push (the same, not counted against the rates), to, all, leave;
-- [11] to, [12] body, [13] unknown-peer error body, [14] address key, [15] window (ms),
-- [16] rate per address, [17] rate per room.
local room, peer, op = ARGV[6], ARGV[7], ARGV[10]
local pk = pkey(room, peer)
local f = redis.call('HMGET', pk, 'ep', 'inst')
if f[1] ~= ARGV[8] or f[2] ~= ARGV[9] then return {'stale', EVICTED} end
if op ~= 'push' then
  redis.call('HINCRBY', pk, 'mi', 1)
  local window = tonumber(ARGV[15])
  local w = math.floor(NOW / window)
  local ak, rk = P .. 'ra:' .. ARGV[14] .. ':' .. w, P .. 'rr:' .. room .. ':' .. w
  local a, r = redis.call('INCR', ak), redis.call('INCR', rk)
  if a == 1 then redis.call('PEXPIRE', ak, window * 2) end
  if r == 1 then redis.call('PEXPIRE', rk, window * 2) end
  if a > tonumber(ARGV[16]) or r > tonumber(ARGV[17]) then return {'limited', EVICTED} end
end
if op == 'self' or op == 'push' then
  deliver(room, peer, ARGV[12])
elseif op == 'leave' then
  evict(room, peer, 'left')
elseif op == 'to' then
  local to = ARGV[11]
  if to == peer or redis.call('HEXISTS', mkey(room), to) == 0 then
    deliver(room, peer, ARGV[13])
    end_overflowed(room)
    return {'unknown-peer', EVICTED}
  end
  deliver(room, to, ARGV[12])
else
  for _, other in ipairs(redis.call('HKEYS', mkey(room))) do
    if other ~= peer then deliver(room, other, ARGV[12]) end
  end
end
end_overflowed(room)
return {'ok', EVICTED}
