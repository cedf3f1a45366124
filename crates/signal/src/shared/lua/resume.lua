-- A peer comes back through this instance: the old connection (wherever it is) is told to
-- close with 4000 and fenced by the new epoch; returns the peer, the epoch, the log after
-- last_seq, the other peers and its own meta.
-- ARGV[6] room, [7] token, [8] last_seq, [9] instance, [10] new token, [11] address.
local room, token, last_seq, inst = ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9]
local status, peer = check_resume(room, token, last_seq)
if status ~= 'ok' then return {status} end
local pk = pkey(room, peer)
local f = redis.call('HMGET', pk, 'inst', 'ep')
if f[1] ~= '' then
  push(f[1], room, peer, f[2], 'c', '4000 replaced by a resumed connection')
  redis.call('SREM', P .. 'ip:' .. f[1], member(room, peer))
end
local epoch = redis.call('HINCRBY', pk, 'ep', 1)
redis.call('HSET', pk, 'tok', ARGV[10], 'addr', ARGV[11])
redis.call('DEL', P .. 't:' .. token)
redis.call('SET', P .. 't:' .. ARGV[10], member(room, peer))
attach(room, peer, inst)
local others = redis.call('HGETALL', mkey(room))
local rest = {}
for i = 1, #others, 2 do
  if others[i] ~= peer then
    table.insert(rest, others[i])
    table.insert(rest, others[i + 1])
  end
end
return {'ok', peer, epoch, backlog(room, peer, last_seq), rest, redis.call('HGET', mkey(room), peer)}
