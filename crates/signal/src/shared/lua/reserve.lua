-- Holds a slot for an upgrade in progress until it joins or the hold expires.
-- ARGV[6] room, [7] reservation id, [8] capacity, [9] hold (ms).
local room = ARGV[6]
if not has_room(room, tonumber(ARGV[8])) then return 'full' end
redis.call('ZADD', vkey(room), NOW + tonumber(ARGV[9]), ARGV[7])
return 'ok'
