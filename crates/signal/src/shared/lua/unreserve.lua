-- Gives back a slot whose upgrade failed. ARGV[6] room, [7] reservation id.
redis.call('ZREM', vkey(ARGV[6]), ARGV[7])
return 'ok'
