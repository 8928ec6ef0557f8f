-- twisted_alive's Redis session store: one batch of operations, applied
-- atomically (the script runs alone in Redis). See twisted_alive/_redis.py
-- and docs/stores.md, "The Redis store".
--
-- ARGV: prefix, the store's identity, the batch's number, replay TTL
-- (seconds), then each operation as its name, the number of its
-- arguments, and its arguments. Every change
-- is checked before anything is written, so that an operation refused
-- leaves nothing behind. The reply: {results, sessions, messages}, one
-- result per operation, each a table whose first element says how it went
-- ('ok', 'none', 'unknown', 'taken', 'exists', 'seq', 'full').
--
-- A batch that changed something leaves its number and its reply under
-- prefix..'done:'..identity (one key per store, overwritten by its next
-- batch: a store has one batch under way at a time) for the replay TTL:
-- the same batch sent again (its reply was lost with the connection) gets
-- that reply back and changes nothing a second time.

local prefix = ARGV[1]
local done = prefix .. 'done:' .. ARGV[2]
local number = ARGV[3]
local kept = redis.call('GET', done)
if kept then
    kept = cmsgpack.unpack(kept)
    if kept[1] == number then
        return kept[2]
    end
end
local me = ARGV[2]
local seen = prefix .. 'seen'
local total = prefix .. 'messages'
local ids = prefix .. 'ids'
local mailed = prefix .. 'mailed'
local CHUNK = 1000

local function push(key, values, first, last)
    -- RPUSH values[first..last], a chunk at a time (Lua's unpack has a limit).
    while first <= last do
        local upto = math.min(last, first + CHUNK - 1)
        redis.call('RPUSH', key, unpack(values, first, upto))
        first = upto + 1
    end
end

local function fence(s, epoch)
    -- nil if the session exists and (when epoch is given) has that epoch;
    -- otherwise the refusal.
    local stored = redis.call('HGET', s, 'epoch')
    if not stored then
        return {'unknown'}
    end
    if epoch ~= '' and stored ~= epoch then
        return {'taken', stored}
    end
    return nil
end

local function forget(hex)
    local s = prefix .. 's:' .. hex
    local count = redis.call('HGET', s, 'count')
    if not count then
        return false
    end
    local x = prefix .. 'x:' .. hex
    local w = prefix .. 'w:' .. hex
    for _, item in ipairs(redis.call('LRANGE', x, 0, -1)) do
        redis.call('SET', prefix .. 'q:' .. string.sub(item, 1, 32), 'gone', 'KEEPTTL')
    end
    for _, id in ipairs(redis.call('ZRANGE', w, 0, -1)) do
        redis.call('SET', prefix .. 'q:' .. id, 'lost', 'KEEPTTL')
    end
    local id = redis.call('HGET', s, 'id')
    if id then
        redis.call('HDEL', ids, id)
    end
    redis.call('DEL', s, prefix .. 'm:' .. hex, prefix .. 'r:' .. hex, x, w)
    redis.call('SREM', mailed, hex)
    redis.call('ZREM', seen, hex)
    redis.call('DECRBY', total, count)
    return true
end

local operations = {}

function operations.create(a)
    -- hex, id, epoch, nextSeq, confirmedUpTo, processedUpTo, lastSeen,
    -- bytes, n, n payloads, then (seq, reason) pairs
    local hex = a[1]
    local s = prefix .. 's:' .. hex
    if redis.call('EXISTS', s) == 1 then
        return {'exists'}
    end
    local n = tonumber(a[9])
    redis.call('HSET', s, 'id', a[2], 'holder', me, 'epoch', a[3], 'nextSeq', a[4],
        'confirmedUpTo', a[5], 'processedUpTo', a[6], 'lastSeen', a[7], 'count', n,
        'bytes', a[8])
    redis.call('HSET', ids, a[2], hex)
    push(prefix .. 'm:' .. hex, a, 10, 9 + n)
    push(prefix .. 'r:' .. hex, a, 10 + n, #a)
    redis.call('ZADD', seen, a[7], hex)
    redis.call('INCRBY', total, n)
    return {'ok'}
end

function operations.append(a)
    -- hex, epoch, firstSeq, maxMessages, maxBytes, k, k mail ids, payloads...
    -- (the first k payloads are the mailbox's first k messages, which
    -- leave the mailbox: they are the session's messages from now on)
    local hex = a[1]
    local s = prefix .. 's:' .. hex
    local refused = fence(s, a[2])
    if refused then
        return refused
    end
    local k = tonumber(a[6])
    local first = 7 + k
    local n = #a - first + 1
    local nextSeq = tonumber(redis.call('HGET', s, 'nextSeq'))
    if n > 0 and tonumber(a[3]) ~= nextSeq then
        return {'seq', nextSeq}
    end
    local x = prefix .. 'x:' .. hex
    if k > 0 then
        local head = redis.call('LRANGE', x, 0, k - 1)
        for j = 1, k do
            if not head[j] or string.sub(head[j], 1, 32) ~= a[6 + j] then
                return {'mail'}
            end
        end
    end
    local held = tonumber(redis.call('HGET', s, 'count'))
    local heldBytes = tonumber(redis.call('HGET', s, 'bytes'))
    local size = 0
    for i = first, #a do
        size = size + #a[i]
    end
    if held + n > tonumber(a[4]) or ((held > 0 or n > 1) and heldBytes + size > tonumber(a[5])) then
        return {'full', held, heldBytes}
    end
    if n > 0 then
        push(prefix .. 'm:' .. hex, a, first, #a)
        redis.call('HSET', s, 'nextSeq', nextSeq + n, 'count', held + n, 'bytes', heldBytes + size)
        redis.call('INCRBY', total, n)
    end
    if k > 0 then
        redis.call('LTRIM', x, k, -1)
        local w = prefix .. 'w:' .. hex
        for j = 1, k do
            redis.call('ZADD', w, nextSeq + j - 1, a[6 + j])
            redis.call('SET', prefix .. 'q:' .. a[6 + j], 'sent', 'KEEPTTL')
        end
        if redis.call('LLEN', x) == 0 then
            redis.call('SREM', mailed, hex)
        end
    end
    return {'ok'}
end

function operations.confirm(a)
    -- hex, epoch, upTo
    local hex = a[1]
    local s = prefix .. 's:' .. hex
    local refused = fence(s, a[2])
    if refused then
        return refused
    end
    local upTo = tonumber(a[3])
    local nextSeq = tonumber(redis.call('HGET', s, 'nextSeq'))
    if upTo >= nextSeq then
        return {'seq', nextSeq}
    end
    if upTo <= tonumber(redis.call('HGET', s, 'confirmedUpTo')) then
        return {'ok'}
    end
    local held = tonumber(redis.call('HGET', s, 'count'))
    local drop = math.min(held, upTo - (nextSeq - held) + 1)
    local m = prefix .. 'm:' .. hex
    local dropped = 0
    if drop > 0 then
        for _, payload in ipairs(redis.call('LRANGE', m, 0, drop - 1)) do
            dropped = dropped + #payload
        end
        redis.call('LTRIM', m, drop, -1)
        redis.call('DECRBY', total, drop)
    else
        drop = 0
    end
    redis.call('HSET', s, 'confirmedUpTo', upTo, 'count', held - drop,
        'bytes', tonumber(redis.call('HGET', s, 'bytes')) - dropped)
    local w = prefix .. 'w:' .. hex
    local confirmed = redis.call('ZRANGEBYSCORE', w, '-inf', upTo, 'WITHSCORES')
    if #confirmed > 0 then
        for j = 1, #confirmed, 2 do
            redis.call('SET', prefix .. 'q:' .. confirmed[j], 'ok ' .. confirmed[j + 1], 'KEEPTTL')
        end
        redis.call('ZREMRANGEBYSCORE', w, '-inf', upTo)
    end
    return {'ok'}
end

function operations.processed(a)
    -- hex, epoch, upTo, '1' to replace the rejections (then pairs) or '0'
    local hex = a[1]
    local s = prefix .. 's:' .. hex
    local refused = fence(s, a[2])
    if refused then
        return refused
    end
    if tonumber(a[3]) > tonumber(redis.call('HGET', s, 'processedUpTo')) then
        redis.call('HSET', s, 'processedUpTo', a[3])
    end
    if a[4] == '1' then
        local r = prefix .. 'r:' .. hex
        redis.call('DEL', r)
        push(r, a, 5, #a)
    end
    return {'ok'}
end

function operations.touch(a)
    -- hex, epoch, lastSeen
    local hex = a[1]
    local s = prefix .. 's:' .. hex
    local refused = fence(s, a[2])
    if refused then
        return refused
    end
    if tonumber(a[3]) > tonumber(redis.call('HGET', s, 'lastSeen')) then
        redis.call('HSET', s, 'lastSeen', a[3])
        redis.call('ZADD', seen, a[3], hex)
    end
    return {'ok'}
end

function operations.delete(a)
    -- hex, epoch
    local s = prefix .. 's:' .. a[1]
    local stored = redis.call('HGET', s, 'epoch')
    if stored and a[2] ~= '' and stored ~= a[2] then
        return {'taken', stored}
    end
    if forget(a[1]) then
        return {'ok', 1}
    end
    return {'ok', 0}
end

function operations.load(a)
    -- hex
    local hex = a[1]
    local s = prefix .. 's:' .. hex
    local fields = redis.call('HMGET', s, 'epoch', 'nextSeq', 'confirmedUpTo', 'processedUpTo',
        'lastSeen')
    if not fields[1] then
        return {'none'}
    end
    return {'ok', fields[1], fields[2], fields[3], fields[4], fields[5],
        redis.call('LRANGE', prefix .. 'm:' .. hex, 0, -1),
        redis.call('LRANGE', prefix .. 'r:' .. hex, 0, -1)}
end

function operations.take(a)
    -- hex, the epoch this store holds it with ('' if none): unless that is
    -- still the session's epoch, raise it by one, make this store its
    -- holder and tell the previous holder (its list of sessions taken from
    -- it); then load it
    local hex = a[1]
    local s = prefix .. 's:' .. hex
    local stored = redis.call('HGET', s, 'epoch')
    if not stored then
        return {'none'}
    end
    if a[2] == '' or stored ~= a[2] then
        local holder = redis.call('HGET', s, 'holder')
        local epoch = redis.call('HINCRBY', s, 'epoch', 1)
        redis.call('HSET', s, 'holder', me)
        if holder and holder ~= me then
            local t = prefix .. 't:' .. holder
            redis.call('RPUSH', t, hex .. ' ' .. epoch)
            redis.call('EXPIRE', t, ARGV[4])
        end
    end
    return operations.load(a)
end

function operations.post(a)
    -- id, message id (32 characters), seconds its outcome is kept,
    -- mailbox limit, payload: into the mailbox of the session with that id
    local hex = redis.call('HGET', ids, a[1])
    if not hex then
        return {'unknown'}
    end
    local x = prefix .. 'x:' .. hex
    if redis.call('LLEN', x) >= tonumber(a[4]) then
        return {'full'}
    end
    redis.call('RPUSH', x, a[2] .. a[5])
    redis.call('SET', prefix .. 'q:' .. a[2], 'wait', 'EX', a[3])
    redis.call('SADD', mailed, hex)
    return {'ok'}
end

function operations.mail(a)
    -- hex, epoch, at most how many: the first messages of the mailbox
    local hex = a[1]
    local refused = fence(prefix .. 's:' .. hex, a[2])
    if refused then
        return refused
    end
    return {'ok', redis.call('LRANGE', prefix .. 'x:' .. hex, 0, tonumber(a[3]) - 1)}
end

function operations.reject(a)
    -- hex, epoch, seq, text: the client's application failed on message
    -- seq; if it came from the mailbox, its sender learns it
    local hex = a[1]
    local refused = fence(prefix .. 's:' .. hex, a[2])
    if refused then
        return refused
    end
    local w = prefix .. 'w:' .. hex
    local found = redis.call('ZRANGEBYSCORE', w, a[3], a[3])
    for _, id in ipairs(found) do
        redis.call('SET', prefix .. 'q:' .. id, 'rejected ' .. a[4], 'KEEPTTL')
        redis.call('ZREM', w, id)
    end
    return {'ok'}
end

function operations.poll(a)
    -- message ids: the sessions taken from this store since the last poll
    -- ('HEX EPOCH', the epoch they were taken with),
    -- the sessions whose mailbox holds messages, and each message's outcome
    local t = prefix .. 't:' .. me
    local taken = redis.call('LRANGE', t, 0, -1)
    if #taken > 0 then
        redis.call('DEL', t)
    end
    local outcomes = {}
    for j = 1, #a do
        outcomes[j] = redis.call('GET', prefix .. 'q:' .. a[j]) or 'unknown'
    end
    return {'ok', taken, redis.call('SMEMBERS', mailed), outcomes}
end

function operations.list(a)
    return {'ok', redis.call('ZRANGE', seen, 0, -1)}
end

function operations.expire(a)
    -- cutoff: the sessions last seen before it go
    local gone = redis.call('ZRANGEBYSCORE', seen, '-inf', '(' .. a[1])
    for _, hex in ipairs(gone) do
        forget(hex)
    end
    return {'ok', gone}
end

local READS = {load = true, list = true, mail = true}
local results = {}
local changes = false
local i = 5
while i <= #ARGV do
    local name = ARGV[i]
    local n = tonumber(ARGV[i + 1])
    local a = {}
    for j = 1, n do
        a[j] = ARGV[i + 1 + j]
    end
    results[#results + 1] = operations[name](a)
    if not READS[name] then
        changes = true
    end
    i = i + 2 + n
end
local reply = {results, redis.call('ZCARD', seen), tonumber(redis.call('GET', total) or '0')}
if changes then
    redis.call('SET', done, cmsgpack.pack({number, reply}), 'EX', ARGV[4])
end
return reply
