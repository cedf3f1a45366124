-- Admin removes peers wherever they are connected: ARGV[6] room, [7] peer ('' for every
-- peer of the room), [8] close ("CODE reason"), [9] peer-left reason.
local room = ARGV[6]
local peers = {ARGV[7]}
if ARGV[7] == '' then peers = redis.call('HKEYS', mkey(room)) end
local n = 0
for _, peer in ipairs(peers) do
  if evict(room, peer, ARGV[9], ARGV[8]) then n = n + 1 end
end
end_overflowed(room)
return {n, EVICTED}
