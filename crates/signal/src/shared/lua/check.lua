-- The checks a join or resume will make, before the upgrade.
-- ARGV[6] room, [7] resume token ('' for a join), [8] last_seq, [9] capacity.
local room, token = ARGV[6], ARGV[7]
if token == '' then
  if has_room(room, tonumber(ARGV[9])) then return 'ok' end
  return 'full'
end
return (check_resume(room, token, tonumber(ARGV[8])))
