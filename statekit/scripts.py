"""The Lua scripts of the session store, in one place for every client that runs them.

Each script touches only the keys of one session (one hash tag, so one cluster slot).
Numeric fields of the meta hash are checked before use: a field that holds something
else makes the script answer `CORRUPT <key> field <name> ...` and write nothing, instead
of reading it as 0 (which would reset the byte count and let the cap be passed).
"""

from __future__ import annotations

import hashlib

__all__ = [
    "Script",
    "SCRIPTS",
    "APPEND_LUA",
    "FOLD_LUA",
    "LOAD_LUA",
    "GET_STATE_LUA",
    "CAS_STATE_LUA",
    "KEEPTTL_CAS_LUA",
    "TAG_REGION_LUA",
    "CORRUPT_PREFIX",
    "MULTI",
    "EXEC",
]

#: How a script's error reply starts when a meta field is not a number.
CORRUPT_PREFIX = "CORRUPT "

# Returns an error message when m[i] is present but not a number, for the fields named.
# `expire_all(ttl)` gives every key of the session one deadline, read once from the server's
# clock: separate PEXPIREs could give the keys deadlines a millisecond apart, and in that
# window a script that found the meta hash gone (HINCRBY, HSET) would recreate it without a
# TTL. With one deadline the keys expire together; the scripts also treat a session whose
# meta hash (its anchor) is gone as expired as a whole, and never recreate a key by accident.
_CHECK = """
local function corrupt(key, m, fields)
  for i, name in pairs(fields) do
    if m[i] and not tonumber(m[i]) then
      return 'CORRUPT ' .. key .. ' field ' .. name .. ' is not a number'
    end
  end
end
-- No meta hash: a new session, or one that expired (or lost its meta to eviction). What is
-- left of an earlier one is not carried over; a key of the wrong type is not the store's,
-- so it is left for the command that meets it to name (WRONGTYPE: CorruptStateError).
local function forget_leftovers()
  if redis.call('EXISTS', KEYS[2], KEYS[3], KEYS[4]) == 0 then return end
  for i, kind in pairs({[2] = 'list', [3] = 'string', [4] = 'string'}) do
    if redis.call('TYPE', KEYS[i]).ok == kind then redis.call('DEL', KEYS[i]) end
  end
end
local function expire_all(ttl)
  local t = redis.call('TIME')
  local at = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ttl)
  for i = 1, #KEYS do redis.call('PEXPIREAT', KEYS[i], at) end
end
"""

# Append one turn. KEYS: meta log summary state. ARGV: record, turn id, window, cap,
# ttl ms, fold batch, now ms, mode ('park' | 'drop').
# Returns {status, bytes, version, created, evicted, [fold version, summary, parked...]}:
# status 1 stored, 0 duplicate (stored before), -1 over the cap (nothing written).
APPEND_LUA = (
    _CHECK
    + """
local meta, log = KEYS[1], KEYS[2]
local rec, idf = ARGV[1], '#' .. ARGV[2]
local window, cap, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local m = redis.call('HMGET', meta, 'b', 'v', idf, 'fv', 'sv')
local bad = corrupt(meta, m, {[1] = 'b', [2] = 'v', [4] = 'fv', [5] = 'sv'})
if bad then return redis.error_reply(bad) end
local bytes, v = tonumber(m[1]) or 0, tonumber(m[2]) or 0
if m[3] then
  expire_all(ttl)
  return {0, bytes, v, 0, 0}
end
local size = bytes + #rec
if size > cap then return {-1, size, cap, 0, 0} end
if v == 0 then forget_leftovers() end
local n = redis.call('RPUSH', log, rec)
local created = 0
if v == 0 then
  created = 1
  redis.call('HSET', meta, 'v', 1, 'b', size, idf, 1, 'c', ARGV[7])
else
  redis.call('HSET', meta, 'v', v + 1, 'b', size, idf, 1)
end
v = v + 1
local evicted = 0
if n > window then evicted = 1 end
if ARGV[8] == 'drop' and n > window then
  local old = redis.call('LPOP', log, n - window)
  local ids = {}
  for i, r in ipairs(old) do
    size = size - #r
    ids[i] = '#' .. string.sub(r, 1, string.find(r, '\\31', 1, true) - 1)
  end
  redis.call('HDEL', meta, unpack(ids))
  redis.call('HSET', meta, 'b', size)
  evicted = #old
end
-- slide the TTL of every key of the session, to one deadline
expire_all(ttl)
local parked = n - window
if ARGV[8] == 'park' and parked >= tonumber(ARGV[6]) then
  local out = {1, size, v, created, parked, m[4] or '0', redis.call('GET', KEYS[3]) or ''}
  for i, r in ipairs(redis.call('LRANGE', log, 0, parked - 1)) do out[7 + i] = r end
  return out
end
return {1, size, v, created, evicted}
"""
)

# Fold parked turns into the summary. KEYS: meta log summary state. ARGV: fold version
# read, turns to fold, first folded turn id, new summary, ttl ms.
# Returns {1, bytes} or {0} when another process folded first (nothing changed).
FOLD_LUA = (
    _CHECK
    + """
local meta, log = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'fv', 'b', 'v')
local bad = corrupt(meta, m, {'fv', 'b', 'v'})
if bad then return redis.error_reply(bad) end
if not m[3] then return {0} end -- the session expired since the append: nothing to fold into
if (m[1] or '0') ~= ARGV[1] then return {0} end
local n = tonumber(ARGV[2])
local recs = redis.call('LRANGE', log, 0, n - 1)
local head = ARGV[3] .. '\\31'
if #recs < n or string.sub(recs[1], 1, #head) ~= head then return {0} end
local freed, ids = 0, {}
for i, r in ipairs(recs) do
  freed = freed + #r
  ids[i] = '#' .. string.sub(r, 1, string.find(r, '\\31', 1, true) - 1)
end
redis.call('LTRIM', log, n, -1)
redis.call('HDEL', meta, unpack(ids))
local old = redis.call('STRLEN', KEYS[3])
if #ARGV[4] > 0 then redis.call('SET', KEYS[3], ARGV[4]) else redis.call('DEL', KEYS[3]) end
local size = (tonumber(m[2]) or 0) - freed - old + #ARGV[4]
redis.call('HSET', meta, 'b', size, 'fv', tonumber(m[1] or '0') + 1, 'v', (tonumber(m[3]) or 0) + 1)
expire_all(ARGV[5])
return {1, size}
"""
)

# Read a session's context. KEYS: meta log summary. Returns {{v, b}, log records, summary}.
# Used on Redis Cluster when a slot moves; otherwise load_context sends the same reads as
# one MULTI/EXEC transaction, which skips the Lua round trip of a large LRANGE reply.
LOAD_LUA = """
return {redis.call('HMGET', KEYS[1], 'v', 'b'), redis.call('LRANGE', KEYS[2], 0, -1), redis.call('GET', KEYS[3])}
"""

# Read structured state and its version atomically. KEYS: meta state. ARGV: optionally an
# update id. Returns {state version, blob or false}, and with an update id a third element:
# 1 when that update was applied already. A session without its meta hash has expired (or
# is expiring) as a whole: {'0', false}.
GET_STATE_LUA = (
    _CHECK
    + """
local m = redis.call('HMGET', KEYS[1], 'sv', 'v', 'ops')
local bad = corrupt(KEYS[1], m, {'sv'})
if bad then return redis.error_reply(bad) end
if not m[2] then
  if ARGV[1] then return {'0', false, 0} end
  return {'0', false}
end
if ARGV[1] then
  local seen = 0
  if m[3] and string.find(' ' .. m[3] .. ' ', ' ' .. ARGV[1] .. ' ', 1, true) then seen = 1 end
  return {m[1] or '0', redis.call('GET', KEYS[2]), seen}
end
return {m[1] or '0', redis.call('GET', KEYS[2])}
"""
)

#: How many update ids a session's meta hash remembers (field `ops`): a buffered update is
#: recognised as applied while fewer than this many other updates of its session landed
#: between its first attempt and its replay.
UPDATE_IDS_KEPT = 32

# Compare-and-set structured state. KEYS: meta log summary state. ARGV: expected state
# version, blob, cap, ttl ms, now ms, update id ('' for none). Returns {1, new sv, bytes},
# {0, current sv} on a conflict, {-1, size, cap} over the cap (nothing written), {2, sv}
# when the update id is among those applied already (nothing written). The update id is
# recorded in the same script as the write, so a replay after a lost reply finds it.
CAS_STATE_LUA = (
    _CHECK
    + """
local meta, state = KEYS[1], KEYS[4]
local m = redis.call('HMGET', meta, 'sv', 'b', 'v', 'ops')
local bad = corrupt(meta, m, {'sv', 'b', 'v'})
if bad then return redis.error_reply(bad) end
local op, ops = ARGV[6] or '', m[4] or ''
if op ~= '' and string.find(' ' .. ops .. ' ', ' ' .. op .. ' ', 1, true) then return {2, tonumber(m[1]) or 0} end
local sv = tonumber(m[1]) or 0
if sv ~= tonumber(ARGV[1]) then return {0, sv} end
if not m[3] then forget_leftovers() end
local size = (tonumber(m[2]) or 0) - redis.call('STRLEN', state) + #ARGV[2]
if size > tonumber(ARGV[3]) then return {-1, size, tonumber(ARGV[3])} end
redis.call('SET', state, ARGV[2])
if not m[3] then redis.call('HSET', meta, 'c', ARGV[5]) end
redis.call('HSET', meta, 'sv', sv + 1, 'b', size, 'v', (tonumber(m[3]) or 0) + 1)
if op ~= '' then
  local kept = {}
  for id in string.gmatch(ops, '%S+') do kept[#kept + 1] = id end
  kept[#kept + 1] = op
  redis.call('HSET', meta, 'ops', table.concat(kept, ' ', math.max(1, #kept - UPDATE_IDS_KEPT + 1)))
end
expire_all(ARGV[4])
return {1, sv + 1, size}
""".replace("UPDATE_IDS_KEPT", str(UPDATE_IDS_KEPT))
)

# Write migrated state back, keeping the key's TTL, only if nobody wrote it since it was
# read and the session has not expired. KEYS: meta state. ARGV: state version read, blob.
# Returns 1 written, 0 changed or expired since.
KEEPTTL_CAS_LUA = (
    _CHECK
    + """
local m = redis.call('HMGET', KEYS[1], 'sv', 'b', 'v')
local bad = corrupt(KEYS[1], m, {'sv', 'b'})
if bad then return redis.error_reply(bad) end
if not m[3] then return 0 end -- the session expired since it was read: HINCRBY would recreate meta
if (tonumber(m[1]) or 0) ~= tonumber(ARGV[1]) then return 0 end
local old = redis.call('STRLEN', KEYS[2])
if old == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
redis.call('HINCRBY', KEYS[1], 'b', #ARGV[2] - old)
return 1
"""
)

# Tag a session with its region, only if its meta hash exists (HSET on an existing hash
# keeps its TTL; on a missing one it would create a key that never expires).
# KEYS: meta. ARGV: region. Returns 1 tagged, 0 no such session.
TAG_REGION_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'rg', ARGV[1])
return 1
"""

#: MULTI and EXEC, packed once: load_context sends its reads as one transaction.
MULTI, EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"


class Script:
    """A Lua script and its SHA1, for EVALSHA from any client, sync or asyncio.

    Not redis-py's `register_script`, whose objects are bound to one client (a sync `Script`
    or an `AsyncScript`): the stores send these through their own wire, and the same text
    and digest serve every client kind.
    """

    __slots__ = ("name", "script", "sha")

    def __init__(self, name: str, script: str) -> None:
        self.name = name
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r}, sha={self.sha[:12]})"


#: Every script of the session store, by name.
SCRIPTS = {
    name: Script(name, text)
    for name, text in (
        ("append", APPEND_LUA),
        ("fold", FOLD_LUA),
        ("load", LOAD_LUA),
        ("get_state", GET_STATE_LUA),
        ("cas_state", CAS_STATE_LUA),
        ("keepttl_cas", KEEPTTL_CAS_LUA),
        ("tag_region", TAG_REGION_LUA),
    )
}


# -- LangGraph checkpoints (statekit.langgraph) -------------------------------------------
#
# A thread is two keys with one hash tag, so every script below stays on one cluster slot:
#   KEYS[1] hash  `c\0<ns>\0<id>` checkpoint record; `v\0<ns>\0<id>` its run id and the
#                 blobs it references (every token ends in \0); `b\0<ns>\0<channel>\0<version>`
#                 a channel value; `r\0...` how many checkpoints reference that value;
#                 `w\0<ns>\0<id>\0<task>\0<idx>` a pending write; `bytes` payload bytes held.
#   KEYS[2] zset  (all scores 0, ordered by member) `c\0<ns>\0<id>` per checkpoint,
#                 `w\0<ns>\0<id>\0<task>\0<idx>` per write, `u\0<run>\0<ns>\0<id>` per run.
# Checkpoint namespaces, ids, channels, versions, task and run ids hold no \0 (checked
# before a script runs). Every write refreshes both keys' TTL in the same script.

_CHECKPOINT_LIB = r"""
local h, z = KEYS[1], KEYS[2]
local function split(s)
  local out = {}
  for tok in string.gmatch(s, '([^%z]*)%z') do out[#out + 1] = tok end
  return out
end
local function used_bytes()
  local raw = redis.call('HGET', h, 'bytes')
  local n = tonumber(raw or '0')
  if not n then return nil, 'CORRUPT ' .. h .. ' field bytes is not a number' end
  return n
end
-- Release the blobs that refs (a `v` field's value) point at, into delta.
local function release(ns, refs, delta, sign)
  local t = split(refs)
  for i = 2, #t - 1, 2 do
    local b = ns .. '\0' .. t[i] .. '\0' .. t[i + 1]
    delta[b] = (delta[b] or 0) + sign
  end
  return t[1]
end
-- One checkpoint, its writes and its run entry: the payload bytes they hold; removed when
-- apply. Its blob references are released into delta (blobs go in settle).
local function drop(ns, id, delta, apply)
  local p = ns .. '\0' .. id
  local freed = redis.call('HSTRLEN', h, 'c\0' .. p)
  local refs = redis.call('HGET', h, 'v\0' .. p)
  local run = ''
  if refs then
    freed = freed + #refs
    run = release(ns, refs, delta, -1)
  end
  local lo, hi = '[w\0' .. p .. '\0', '(w\0' .. p .. '\1'
  local ws = redis.call('ZRANGEBYLEX', z, lo, hi)
  for _, w in ipairs(ws) do freed = freed + redis.call('HSTRLEN', h, w) end
  if apply then
    redis.call('HDEL', h, 'c\0' .. p, 'v\0' .. p)
    redis.call('ZREM', z, 'c\0' .. p)
    if run ~= '' then redis.call('ZREM', z, 'u\0' .. run .. '\0' .. p) end
    for i = 1, #ws, 1000 do
      redis.call('HDEL', h, unpack(ws, i, math.min(i + 999, #ws)))
    end
    if #ws > 0 then redis.call('ZREMRANGEBYLEX', z, lo, hi) end
  end
  return freed
end
-- Apply reference count changes; a blob no checkpoint references any more is removed.
-- Returns the payload bytes of those blobs.
local function settle(delta, apply)
  local freed = 0
  for b, d in pairs(delta) do
    if d ~= 0 then
      local n = (tonumber(redis.call('HGET', h, 'r\0' .. b) or '0') or 0) + d
      if n <= 0 then
        freed = freed + redis.call('HSTRLEN', h, 'b\0' .. b)
        if apply then redis.call('HDEL', h, 'r\0' .. b, 'b\0' .. b) end
      elseif apply then
        redis.call('HSET', h, 'r\0' .. b, n)
      end
    end
  end
  return freed
end
local function expire(ttl)
  redis.call('PEXPIRE', h, ttl)
  redis.call('PEXPIRE', z, ttl)
end
local function id_of(member)
  return string.match(member, '([^%z]*)$')
end
-- A checkpoint with its blobs and writes, for reading: {member, record, refs, blobs, writes}.
local function fetch(ns, id)
  local p = ns .. '\0' .. id
  local record = redis.call('HGET', h, 'c\0' .. p)
  if not record then return nil end
  local refs = redis.call('HGET', h, 'v\0' .. p) or ''
  local t = split(refs)
  local fields = {}
  for i = 2, #t - 1, 2 do fields[#fields + 1] = 'b\0' .. ns .. '\0' .. t[i] .. '\0' .. t[i + 1] end
  local blobs = {}
  if #fields > 0 then blobs = redis.call('HMGET', h, unpack(fields)) end
  local ws = redis.call('ZRANGEBYLEX', z, '[w\0' .. p .. '\0', '(w\0' .. p .. '\1')
  local writes = {}
  if #ws > 0 then writes = redis.call('HMGET', h, unpack(ws)) end
  return {'c\0' .. p, record, refs, blobs, writes}
end
"""

# Write a checkpoint. ARGV: ttl ms, cap bytes, keep_last (0: all), ns, id, record, refs,
# n blobs, then n pairs (channel\0version, value). Returns {1, bytes, pruned} or
# {-1, bytes it would hold, cap} (nothing written).
CHECKPOINT_PUT_LUA = (
    _CHECKPOINT_LIB
    + r"""
local ttl, cap, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ns, id, record, refs = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local nb = tonumber(ARGV[8])
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
local p = ns .. '\0' .. id
local old_refs = redis.call('HGET', h, 'v\0' .. p)
local add = #record + #refs - redis.call('HSTRLEN', h, 'c\0' .. p) - (old_refs and #old_refs or 0)
for i = 0, nb - 1 do
  add = add + #ARGV[10 + 2 * i] - redis.call('HSTRLEN', h, 'b\0' .. ns .. '\0' .. ARGV[9 + 2 * i])
end
local victims = {}
if keep > 0 then
  local others = {}
  for _, m in ipairs(redis.call('ZRANGEBYLEX', z, '[c\0' .. ns .. '\0', '(c\0' .. ns .. '\1')) do
    if m ~= 'c\0' .. p then others[#others + 1] = id_of(m) end
  end
  for i = 1, #others + 1 - keep do victims[#victims + 1] = others[i] end
end
local function plan(apply)
  local delta, freed = {}, 0
  release(ns, refs, delta, 1)
  if old_refs then
    local old_run = release(ns, old_refs, delta, -1)
    if apply and old_run ~= '' then redis.call('ZREM', z, 'u\0' .. old_run .. '\0' .. p) end
  end
  for _, v in ipairs(victims) do freed = freed + drop(ns, v, delta, apply) end
  if apply then
    redis.call('HSET', h, 'c\0' .. p, record, 'v\0' .. p, refs)
    redis.call('ZADD', z, 0, 'c\0' .. p)
    local run = split(refs)[1]
    if run ~= '' then redis.call('ZADD', z, 0, 'u\0' .. run .. '\0' .. p) end
    for i = 0, nb - 1 do
      redis.call('HSET', h, 'b\0' .. ns .. '\0' .. ARGV[9 + 2 * i], ARGV[10 + 2 * i])
    end
  end
  return freed + settle(delta, apply)
end
local total = used + add - plan(false)
if total > cap then return {-1, total, cap} end
total = used + add - plan(true)
redis.call('HSET', h, 'bytes', total)
expire(ttl)
return {1, total, #victims}
"""
)

# Store pending writes of one checkpoint. ARGV: ttl ms, cap, ns, id, n, then n groups of
# (task id, idx, value, overwrite 1|0). A write whose (task, idx) is stored already is kept
# unless overwrite. Returns {1, bytes} or {-1, bytes it would hold, cap}.
CHECKPOINT_WRITES_LUA = (
    _CHECKPOINT_LIB
    + r"""
local ttl, cap, ns, id, n = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
local add, todo = 0, {}
for i = 0, n - 1 do
  local f = 'w\0' .. ns .. '\0' .. id .. '\0' .. ARGV[6 + 4 * i] .. '\0' .. ARGV[7 + 4 * i]
  local v = ARGV[8 + 4 * i]
  local old = redis.call('HSTRLEN', h, f)
  if old == 0 or ARGV[9 + 4 * i] == '1' then
    add = add + #v - old
    todo[#todo + 1] = {f, v}
  end
end
if used + add > cap then return {-1, used + add, cap} end
for _, fv in ipairs(todo) do
  redis.call('HSET', h, fv[1], fv[2])
  redis.call('ZADD', z, 0, fv[1])
end
redis.call('HSET', h, 'bytes', used + add)
expire(ttl)
return {1, used + add}
"""
)

# Read one checkpoint (ARGV: ns, id) or the newest of a namespace (id ''). Returns
# {member, record, refs, blobs, writes} or nil.
CHECKPOINT_GET_LUA = (
    _CHECKPOINT_LIB
    + r"""
local ns, id = ARGV[1], ARGV[2]
if id == '' then
  local last = redis.call('ZREVRANGEBYLEX', z, '(c\0' .. ns .. '\1', '[c\0' .. ns .. '\0', 'LIMIT', 0, 1)
  if #last == 0 then return nil end
  id = id_of(last[1])
end
return fetch(ns, id)
"""
)

# A page of checkpoints, newest first. ARGV: max, min (ZREVRANGEBYLEX bounds), count,
# before id ('' none). Returns {last member scanned or '', members scanned, entries...}.
CHECKPOINT_LIST_LUA = (
    _CHECKPOINT_LIB
    + r"""
local members = redis.call('ZREVRANGEBYLEX', z, ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local before = ARGV[4]
local out = {members[#members] or '', #members}
for _, m in ipairs(members) do
  local ns, id = string.match(m, '^c%z(.*)%z([^%z]*)$')
  if before == '' or id < before then
    local entry = fetch(ns, id)
    if entry then out[#out + 1] = entry end
  end
end
return out
"""
)

# Remove the checkpoints (and writes, and blobs no longer referenced) of some runs.
# ARGV: run ids. Returns how many checkpoints were removed.
CHECKPOINT_DELETE_RUNS_LUA = (
    _CHECKPOINT_LIB
    + r"""
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
local delta, freed, removed = {}, 0, 0
for _, run in ipairs(ARGV) do
  local lo, hi = '[u\0' .. run .. '\0', '(u\0' .. run .. '\1'
  for _, m in ipairs(redis.call('ZRANGEBYLEX', z, lo, hi)) do
    local ns, id = string.match(m, '^u%z[^%z]*%z(.*)%z([^%z]*)$')
    freed = freed + drop(ns, id, delta, true)
    removed = removed + 1
  end
end
if removed > 0 then
  freed = freed + settle(delta, true)
  redis.call('HSET', h, 'bytes', used - freed)
end
return removed
"""
)

# Keep only the newest checkpoint of each namespace (ARGV[1] 'keep_latest'), or remove the
# thread ('delete'). Returns how many checkpoints were removed.
CHECKPOINT_PRUNE_LUA = (
    _CHECKPOINT_LIB
    + r"""
if ARGV[1] == 'delete' then
  local n = redis.call('ZLEXCOUNT', z, '[c\0', '(c\1')
  redis.call('DEL', h, z)
  return n
end
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
local members = redis.call('ZRANGEBYLEX', z, '[c\0', '(c\1')
local delta, freed, removed = {}, 0, 0
for i, m in ipairs(members) do
  local ns, id = string.match(m, '^c%z(.*)%z([^%z]*)$')
  local nxt = members[i + 1]
  if nxt and string.match(nxt, '^c%z(.*)%z[^%z]*$') == ns then
    freed = freed + drop(ns, id, delta, true)
    removed = removed + 1
  end
end
if removed > 0 then
  freed = freed + settle(delta, true)
  redis.call('HSET', h, 'bytes', used - freed)
end
return removed
"""
)

# Everything of a thread, for copying it: {hash fields and values, zset members}.
CHECKPOINT_READ_ALL_LUA = r"""
return {redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1)}
"""

# Merge a copied thread into this one. ARGV: ttl ms, cap, n fields, n (field, value) pairs,
# then zset members. Reference counts and bytes are recounted. Returns {1, bytes} or
# {-1, bytes it would hold, cap} (nothing written).
CHECKPOINT_COPY_LUA = (
    _CHECKPOINT_LIB
    + r"""
local ttl, cap, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
local add = 0
for i = 0, n - 1 do
  add = add + #ARGV[5 + 2 * i] - redis.call('HSTRLEN', h, ARGV[4 + 2 * i])
end
if used + add > cap then return {-1, used + add, cap} end
for i = 0, n - 1 do redis.call('HSET', h, ARGV[4 + 2 * i], ARGV[5 + 2 * i]) end
for i = 4 + 2 * n, #ARGV do redis.call('ZADD', z, 0, ARGV[i]) end
local counts = {}
for _, f in ipairs(redis.call('HKEYS', h)) do
  local kind = string.sub(f, 1, 1)
  if kind == 'r' then
    redis.call('HDEL', h, f)
  elseif kind == 'v' then
    local ns = string.match(f, '^v%z(.*)%z[^%z]*$')
    release(ns, redis.call('HGET', h, f), counts, 1)
  end
end
for b, c in pairs(counts) do redis.call('HSET', h, 'r\0' .. b, c) end
redis.call('HSET', h, 'bytes', used + add)
expire(ttl)
return {1, used + add}
"""
)

#: The checkpoint scripts, by name.
CHECKPOINT_SCRIPTS = {
    name: Script(name, text)
    for name, text in (
        ("checkpoint_put", CHECKPOINT_PUT_LUA),
        ("checkpoint_writes", CHECKPOINT_WRITES_LUA),
        ("checkpoint_get", CHECKPOINT_GET_LUA),
        ("checkpoint_list", CHECKPOINT_LIST_LUA),
        ("checkpoint_delete_runs", CHECKPOINT_DELETE_RUNS_LUA),
        ("checkpoint_prune", CHECKPOINT_PRUNE_LUA),
        ("checkpoint_read_all", CHECKPOINT_READ_ALL_LUA),
        ("checkpoint_copy", CHECKPOINT_COPY_LUA),
    )
}
