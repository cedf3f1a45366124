-- After Redis was unreachable: the instance claims its live connections again (others may
-- have put them into grace when its lease lapsed) and gets what it missed. When Redis lost
-- its data meanwhile (its generation changed), the peers are registered again from what
-- the instance knows, with no presence sent: the others already know them.
-- ARGV[6] instance, [7] the generation the instance knew, [8] a new generation, then per
-- connection: room, peer, epoch, last seq delivered, resume token, meta, address, joined.
-- Returns the generation and per connection 'ok' and the missed texts, or 'gone'
-- (removed, or resumed elsewhere).
local inst = ARGV[6]
local gen = redis.call('GET', P .. 'gen')
if not gen then
  gen = ARGV[8]
  redis.call('SET', P .. 'gen', gen)
end
local restore = gen ~= ARGV[7]
redis.call('SADD', P .. 'insts', inst)
local out = {}
for i = 9, #ARGV, 8 do
  local room, peer, epoch, after = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local pk = pkey(room, peer)
  local f = redis.call('HMGET', pk, 'ep', 'inst')
  if not f[1] and restore then
    redis.call('HSET', mkey(room), peer, ARGV[i + 5])
    redis.call('HSET', pk, 'ep', epoch, 'seq', after, 'lb', 0, 'tok', ARGV[i + 4],
      'addr', ARGV[i + 6], 'jn', ARGV[i + 7], 'mi', 0, 'inst', inst)
    redis.call('SET', P .. 't:' .. ARGV[i + 4], member(room, peer))
    f = {epoch, inst}
  end
  if f[1] ~= epoch or (f[2] ~= '' and f[2] ~= inst) then
    table.insert(out, {'gone'})
  else
    attach(room, peer, inst)
    table.insert(out, {'ok', backlog(room, peer, after)})
  end
end
return {gen, out}
