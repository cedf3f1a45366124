-- Shared by every signaling script (prepended to each). Redis runs one script at a time,
-- so everything a script does to a room is atomic: capacity, seq, logs and delivery.
--
-- ARGV[1] key prefix, ARGV[2] log messages, ARGV[3] log bytes, ARGV[4] inbox cap,
-- ARGV[5] resume grace (ms); each script's own arguments follow from ARGV[6].
--
-- Keys (P = prefix):
--   P m:ROOM        hash peer -> meta JSON: the room's members, connected or in grace
--   P v:ROOM        zset reservation -> expiry ms: upgrades in progress hold a slot
--   P p:ROOM:PEER   hash: inst (instance serving it, '' in grace), ep (epoch, +1 per
--                   resume: fences the old connection), seq (also the count of messages
--                   sent to it), lb (log bytes), tok, gr (grace deadline ms, 0 when
--                   connected), ov (log overflowed in grace), addr, jn (joined unix s), mi
--                   (messages from it)
--   P l:ROOM:PEER   list: the resume log, texts that start with {"seq":N,; its seqs are
--                   consecutive, so the first one kept is seq - length + 1
--   P t:TOKEN       string ROOM\nPEER: a live resume token
--   P g:TOKEN       string ROOM, expires with the grace: a token whose grace ended early
--   P x:INST        stream: an instance's inbox (r room, p peer, e epoch, t text | c close)
--   P i:INST        string with a TTL: the instance's lease
--   P insts         set of instances that may hold peers
--   P ip:INST       set of ROOM\nPEER served by the instance
--   P graces        zset ROOM\nPEER -> grace deadline ms
--   P ra:ADDR:W     P rr:ROOM:W  message counts per address and room in window W
local P = ARGV[1]
local LOG_MSGS = tonumber(ARGV[2])
local LOG_BYTES = tonumber(ARGV[3])
local INBOX_MAX = tonumber(ARGV[4])
local GRACE_MS = tonumber(ARGV[5])
local clock = redis.call('TIME')
local NOW = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function pkey(room, peer) return P .. 'p:' .. room .. ':' .. peer end
local function lkey(room, peer) return P .. 'l:' .. room .. ':' .. peer end
local function mkey(room) return P .. 'm:' .. room end
local function vkey(room) return P .. 'v:' .. room end
local function member(room, peer) return room .. '\n' .. peer end
local function split(m) return string.match(m, '^(.-)\n(.*)$') end

-- Every peer removed by this script: room, peer, addr, joined, in, out, reason (the
-- instance that ran it writes the session records).
local EVICTED = {}
-- Set when a log dropped an entry of a peer in grace: its grace ends before the script does.
local OVERFLOWED = false

local function push(inst, room, peer, epoch, field, value)
  redis.call('XADD', P .. 'x:' .. inst, 'MAXLEN', '~', INBOX_MAX, '*',
    'r', room, 'p', peer, 'e', epoch, field, value)
end

-- Gives `body` (a JSON object) the peer's next seq, logs it and queues it to the peer's
-- instance; a peer in grace only gets it logged.
local function deliver(room, peer, body)
  local pk = pkey(room, peer)
  local seq = redis.call('HINCRBY', pk, 'seq', 1)
  local text = '{"seq":' .. seq .. ',' .. string.sub(body, 2)
  local lk = lkey(room, peer)
  local n = redis.call('RPUSH', lk, text)
  local bytes = redis.call('HINCRBY', pk, 'lb', #text)
  local f = redis.call('HMGET', pk, 'inst', 'ep')
  while n > LOG_MSGS or bytes > LOG_BYTES do
    local old = redis.call('LPOP', lk)
    if not old then break end
    n = n - 1
    bytes = redis.call('HINCRBY', pk, 'lb', -#old)
    if f[1] == '' then
      redis.call('HSET', pk, 'ov', 1)
      OVERFLOWED = true
    end
  end
  if f[1] ~= '' then push(f[1], room, peer, f[2], 't', text) end
end

-- Removes a peer for good: its instance is told to close it with `close` ("CODE reason")
-- when given, its token dies, the others get peer-left. False if there was no such peer.
local function evict(room, peer, reason, close)
  local pk = pkey(room, peer)
  local f = redis.call('HMGET', pk, 'inst', 'ep', 'tok', 'addr', 'jn', 'mi', 'seq')
  if not f[2] then return false end
  if f[1] ~= '' then
    if close then push(f[1], room, peer, f[2], 'c', close) end
    redis.call('SREM', P .. 'ip:' .. f[1], member(room, peer))
  end
  redis.call('DEL', P .. 't:' .. f[3], pk, lkey(room, peer))
  redis.call('ZREM', P .. 'graces', member(room, peer))
  redis.call('HDEL', mkey(room), peer)
  table.insert(EVICTED, {room, peer, f[4], f[5], f[6], f[7], reason})
  local body = '{"type":"peer-left","peer_id":"' .. peer .. '","reason":"' .. reason .. '"}'
  for _, other in ipairs(redis.call('HKEYS', mkey(room))) do deliver(room, other, body) end
  return true
end

-- Ends at once the grace of peers whose log overflowed while they were away; a resume
-- with such a token is told resume-gap until the grace would have ended.
local function end_overflowed(room)
  while OVERFLOWED do
    OVERFLOWED = false
    for _, peer in ipairs(redis.call('HKEYS', mkey(room))) do
      local f = redis.call('HMGET', pkey(room, peer), 'ov', 'gr', 'tok')
      if f[1] == '1' then
        local left = tonumber(f[2]) - NOW
        if left > 0 then redis.call('SET', P .. 'g:' .. f[3], room, 'PX', left) end
        evict(room, peer, 'timeout')
      end
    end
  end
end

-- Whether a resume may go ahead: 'ok' and the peer, or why not.
local function check_resume(room, token, last_seq)
  local v = redis.call('GET', P .. 't:' .. token)
  if not v then
    if redis.call('GET', P .. 'g:' .. token) == room then return 'gap' end
    return 'expired'
  end
  local troom, peer = split(v)
  if troom ~= room then return 'expired' end
  local f = redis.call('HMGET', pkey(room, peer), 'gr', 'seq')
  if not f[2] then return 'expired' end
  local gr = tonumber(f[1])
  if gr > 0 and gr <= NOW then return 'expired' end
  local seq = tonumber(f[2])
  if last_seq > seq then return 'bad' end
  if last_seq + 1 < seq - redis.call('LLEN', lkey(room, peer)) + 1 then return 'gap' end
  return 'ok', peer
end

-- Whether the room has a free slot, after dropping reservations that expired.
local function has_room(room, capacity)
  redis.call('ZREMRANGEBYSCORE', vkey(room), '-inf', NOW)
  return redis.call('HLEN', mkey(room)) + redis.call('ZCARD', vkey(room)) < capacity
end

-- The logged texts of a peer with seq > after, in order.
local function backlog(room, peer, after)
  local out = {}
  for _, text in ipairs(redis.call('LRANGE', lkey(room, peer), 0, -1)) do
    if tonumber(string.match(text, '^{"seq":(%d+)')) > after then table.insert(out, text) end
  end
  return out
end

-- A peer this instance serves again: out of grace, in the instance's set.
local function attach(room, peer, inst)
  redis.call('HSET', pkey(room, peer), 'inst', inst, 'gr', 0, 'ov', 0)
  redis.call('ZREM', P .. 'graces', member(room, peer))
  redis.call('SADD', P .. 'ip:' .. inst, member(room, peer))
  redis.call('SADD', P .. 'insts', inst)
end

-- A peer whose connection is gone: logged to, not delivered to, until its grace ends.
local function detach(room, peer, inst, deadline)
  redis.call('HSET', pkey(room, peer), 'inst', '', 'gr', deadline)
  redis.call('ZADD', P .. 'graces', deadline, member(room, peer))
  redis.call('SREM', P .. 'ip:' .. inst, member(room, peer))
end
