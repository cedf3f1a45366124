-- A connection's messages, in the order it sent them: the frames it had ready when the
-- last batch ended, in one script (the caller awaits it before reading on).
-- ARGV[6] room, [7] peer, [8] epoch, [9] instance, [10] unknown-peer error body,
-- [11] address key, [12] window (ms), [13] rate per address, [14] rate per room, then per
-- message from [15]: op, to, body. op: self (to the sender: pong, errors, ice-servers),
-- push (the same, not counted against the rates), to, all, leave.
-- Returns a status per message handled (ok, limited, unknown-peer; nothing after a
-- leave), or a single 'stale' when the connection was replaced; then the evicted.
local room, peer = ARGV[6], ARGV[7]
local pk = pkey(room, peer)
local f = redis.call('HMGET', pk, 'ep', 'inst')
if f[1] ~= ARGV[8] or f[2] ~= ARGV[9] then return {{'stale'}, EVICTED} end
-- The rate windows, counted once for the batch: message j of n is over a limit when the
-- window's count before the batch plus j passes it.
local counted = 0
for i = 15, #ARGV, 3 do
  if ARGV[i] ~= 'push' then counted = counted + 1 end
end
local a_before, r_before = 0, 0
if counted > 0 then
  redis.call('HINCRBY', pk, 'mi', counted)
  local window = tonumber(ARGV[12])
  local w = math.floor(NOW / window)
  local ak, rk = P .. 'ra:' .. ARGV[11] .. ':' .. w, P .. 'rr:' .. room .. ':' .. w
  a_before = redis.call('INCRBY', ak, counted) - counted
  r_before = redis.call('INCRBY', rk, counted) - counted
  if a_before == 0 then redis.call('PEXPIRE', ak, window * 2) end
  if r_before == 0 then redis.call('PEXPIRE', rk, window * 2) end
end
local rate_addr, rate_room = tonumber(ARGV[13]), tonumber(ARGV[14])
local out = {}
local j = 0
for i = 15, #ARGV, 3 do
  local op, to, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local status = 'ok'
  if op ~= 'push' then
    j = j + 1
    if a_before + j > rate_addr or r_before + j > rate_room then status = 'limited' end
  end
  if status == 'ok' then
    if op == 'self' or op == 'push' then
      deliver(room, peer, body)
    elseif op == 'leave' then
      evict(room, peer, 'left')
      table.insert(out, status)
      break
    elseif op == 'to' then
      if to == peer or redis.call('HEXISTS', mkey(room), to) == 0 then
        deliver(room, peer, ARGV[10])
        status = 'unknown-peer'
      else
        deliver(room, to, body)
      end
    else
      for _, other in ipairs(redis.call('HKEYS', mkey(room))) do
        if other ~= peer then deliver(room, other, body) end
      end
    end
  end
  table.insert(out, status)
end
end_overflowed(room)
return {out, EVICTED}
