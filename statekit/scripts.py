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
#                 `w\0<ns>\0<id>\0<task>\0<idx>` a pending write; `p\0<ns>\0<id>` the root
#                 checkpoint a subgraph checkpoint ran under (its metadata's parents['']);
#                 `x\0<ns>` the newest checkpoint id pruned from a namespace (its watermark:
#                 ids are time-ordered); `bytes` payload bytes held (c, v, b and w fields).
#   KEYS[2] zset  (all scores 0, ordered by member) `c\0<ns>\0<id>` per checkpoint,
#                 `w\0<ns>\0<id>\0<task>\0<idx>` per write, `u\0<run>\0<ns>\0<id>` per run,
#                 `p\0<root id>\0<ns>\0<id>` per subgraph checkpoint.
# Checkpoint namespaces, ids, channels, versions, task and run ids hold no \0 (checked
# before a script runs). The hash is the thread's anchor: an index without its hash (the
# hash expired or was evicted) is what is left of a thread that is gone, so a script that
# writes deletes it first and one that reads answers as for a missing thread; no script
# creates a key it did not mean to. Every write gives both keys one deadline (PEXPIREAT,
# from the server's TIME) in the same script.

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
-- Whether the thread is there. Its hash is its anchor: an index left without it belongs to
-- a thread that expired as a whole, and is deleted when clear (the caller starts afresh).
local function present(clear)
  if redis.call('EXISTS', h) == 1 then return true end
  if clear then redis.call('DEL', z) end
  return false
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
-- Whether root checkpoint `root` was pruned (the subgraph checkpoints that ran under it
-- went with it).
local function root_pruned(root)
  if root == '' then return false end
  local wm = redis.call('HGET', h, 'x\0')
  return wm and root <= wm and redis.call('HEXISTS', h, 'c\0\0' .. root) == 0
end
-- Whether a subgraph checkpoint (or its writes) under root checkpoint `root` belongs to an
-- earlier life of the thread: it arrives at a thread that was not there (`alive` false: the
-- thread expired under the running turn), or its root is not stored while a newer root
-- checkpoint is (the thread expired and started again). Its root is gone, and a subgraph
-- checkpoint without its root would outlive every prune. (A root not stored yet, and newer
-- than every stored one, is the root of a turn still being saved: its subgraphs are kept.)
local function orphaned(alive, root)
  if root == '' then return false end
  if not alive then return true end
  if redis.call('HEXISTS', h, 'c\0\0' .. root) == 1 then return false end
  return #redis.call('ZRANGEBYLEX', z, '(c\0\0' .. root, '(c\0\1', 'LIMIT', 0, 1) > 0
end
-- For a checkpoint (ns, id) that is not stored: the watermark that says it was pruned (its
-- namespace's, or the root namespace's when its root checkpoint `root` was), or nil.
local function pruned(ns, id, root)
  local wm = redis.call('HGET', h, 'x\0' .. ns)
  if wm and id <= wm then return wm end
  if ns ~= '' then
    if root_pruned(root) then return redis.call('HGET', h, 'x\0') end
    -- older than a pruned root checkpoint: so is the root it ran under (roots are pruned oldest
    -- first), and its namespace went with that root (a config from list() names no root)
    local rwm = redis.call('HGET', h, 'x\0')
    if rwm and id <= rwm then return rwm end
  end
  return nil
end
-- One checkpoint, its writes, its run entry, its link to its root and, for a root
-- checkpoint, the subgraph checkpoints that ran under it: the payload bytes they hold and
-- how many checkpoints they are; removed when apply. Blob references are released into
-- delta (blobs go in settle).
local function drop(ns, id, delta, apply)
  local p = ns .. '\0' .. id
  local freed = redis.call('HSTRLEN', h, 'c\0' .. p)
  local count = freed > 0 and 1 or 0
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
    local root = redis.call('HGET', h, 'p\0' .. p)
    if root then
      redis.call('HDEL', h, 'p\0' .. p)
      redis.call('ZREM', z, 'p\0' .. root .. '\0' .. p)
    end
  end
  if ns == '' then
    local emptied = {}
    for _, m in ipairs(redis.call('ZRANGEBYLEX', z, '[p\0' .. id .. '\0', '(p\0' .. id .. '\1')) do
      local sns, sid = string.match(m, '^p%z[^%z]*%z(.*)%z([^%z]*)$')
      local f, n = drop(sns, sid, delta, apply)
      freed, count = freed + f, count + n
      emptied[sns] = true
    end
    if apply then  -- a namespace left empty needs no watermark
      for sns in pairs(emptied) do
        if #redis.call('ZRANGEBYLEX', z, '[c\0' .. sns .. '\0', '(c\0' .. sns .. '\1', 'LIMIT', 0, 1) == 0 then
          redis.call('HDEL', h, 'x\0' .. sns)
        end
      end
    end
  end
  return freed, count
end
-- Writes of namespace ns to checkpoint ids at or below wm that no stored checkpoint owns
-- (saved after their checkpoint was pruned): the payload bytes they hold; removed when apply.
local function sweep(ns, wm, apply)
  local freed, gone, prefix = 0, {}, 'w\0' .. ns .. '\0'
  for _, w in ipairs(redis.call('ZRANGEBYLEX', z, '[' .. prefix, '(' .. prefix .. wm .. '\1')) do
    local id = string.match(string.sub(w, #prefix + 1), '^[^%z]*')
    if redis.call('HEXISTS', h, 'c\0' .. ns .. '\0' .. id) == 0 then
      freed = freed + redis.call('HSTRLEN', h, w)
      gone[#gone + 1] = w
    end
  end
  if apply then
    for i = 1, #gone, 1000 do
      local part = {unpack(gone, i, math.min(i + 999, #gone))}
      redis.call('HDEL', h, unpack(part))
      redis.call('ZREM', z, unpack(part))
    end
  end
  return freed
end
-- Call redis command cmd on key with the arguments in args (a list), at most 1000 at a time
-- (unpack's limit); for commands whose arguments are independent items or pairs (an even
-- chunk size keeps pairs together).
local function batched(cmd, key, args)
  for i = 1, #args, 1000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 999, #args)))
  end
end
-- Apply reference count changes; a blob no checkpoint references any more is removed.
-- Returns the payload bytes of those blobs. The counts are read in one HMGET, written in one
-- HSET and removed in one HDEL (per thousand), not one call each.
local function settle(delta, apply)
  local names, fields = {}, {}
  for b, d in pairs(delta) do
    if d ~= 0 then
      names[#names + 1] = b
      fields[#fields + 1] = 'r\0' .. b
    end
  end
  local freed, gone, counts = 0, {}, {}
  for i = 1, #fields, 1000 do
    local part = redis.call('HMGET', h, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, #part do counts[i + j - 1] = part[j] end
  end
  local set = {}
  for i, b in ipairs(names) do
    local n = (tonumber(counts[i] or '0') or 0) + delta[b]
    if n <= 0 then
      freed = freed + redis.call('HSTRLEN', h, 'b\0' .. b)
      gone[#gone + 1] = 'r\0' .. b
      gone[#gone + 1] = 'b\0' .. b
    else
      set[#set + 1] = 'r\0' .. b
      set[#set + 1] = n
    end
  end
  if apply then
    batched('HDEL', h, gone)
    batched('HSET', h, set)
  end
  return freed
end
-- Both keys expire at one deadline, computed once from the server's clock.
local function expire(ttl)
  local now = redis.call('TIME')
  local at = string.format('%.0f', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl)
  redis.call('PEXPIREAT', h, at)
  redis.call('PEXPIREAT', z, at)
end
local function id_of(member)
  return string.match(member, '([^%z]*)$')
end
-- Subgraph checkpoints whose root checkpoint is not stored and is older than the newest root
-- that is: their root was pruned, or belongs to an earlier life of the thread (one that
-- expired under a running turn). Dropped, with their writes, into delta; returns the bytes.
-- (A root newer than every stored one is a turn's root not saved yet: its subgraphs stay.)
local function drop_strays(delta)
  local newest = redis.call('ZREVRANGEBYLEX', z, '(c\0\1', '[c\0\0', 'LIMIT', 0, 1)[1]
  if not newest then return 0 end
  newest = id_of(newest)
  local freed = 0
  for _, m in ipairs(redis.call('ZRANGEBYLEX', z, '[p\0', '(p\1')) do
    local root, sns, sid = string.match(m, '^p%z([^%z]*)%z(.*)%z([^%z]*)$')
    if root and root < newest and redis.call('HEXISTS', h, 'c\0\0' .. root) == 0 then
      freed = freed + drop(sns, sid, delta, true)
    end
  end
  return freed
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
# root (for a subgraph checkpoint, the root checkpoint it ran under, else ''), n blobs,
# then n pairs (channel\0version, value). Returns {1, bytes, pruned} or {-1, bytes it
# would hold, cap} (nothing written); {0, bytes} (nothing written) for a subgraph
# checkpoint whose root checkpoint was pruned. Pruning a namespace (keep_last) raises its
# watermark and removes the writes stored for checkpoints at or below it; a root
# checkpoint pruned takes its subgraph checkpoints with it.
CHECKPOINT_PUT_LUA = (
    _CHECKPOINT_LIB
    + r"""
local ttl, cap, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ns, id, record, refs, root = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local nb = tonumber(ARGV[9])
local alive = present(true)
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
if ns ~= '' and (root_pruned(root) or orphaned(alive, root)) then return {0, used} end
local p = ns .. '\0' .. id
local old_refs = redis.call('HGET', h, 'v\0' .. p)
local old_root = redis.call('HGET', h, 'p\0' .. p)
local add = #record + #refs - redis.call('HSTRLEN', h, 'c\0' .. p) - (old_refs and #old_refs or 0)
for i = 0, nb - 1 do
  add = add + #ARGV[11 + 2 * i] - redis.call('HSTRLEN', h, 'b\0' .. ns .. '\0' .. ARGV[10 + 2 * i])
end
local victims = {}
if keep > 0 then
  local others = {}
  for _, m in ipairs(redis.call('ZRANGEBYLEX', z, '[c\0' .. ns .. '\0', '(c\0' .. ns .. '\1')) do
    if m ~= 'c\0' .. p then others[#others + 1] = id_of(m) end
  end
  for i = 1, #others + 1 - keep do victims[#victims + 1] = others[i] end
end
local wm = redis.call('HGET', h, 'x\0' .. ns)
if #victims > 0 and (not wm or wm < victims[#victims]) then wm = victims[#victims] end
local function plan(apply)
  local delta, freed = {}, 0
  release(ns, refs, delta, 1)
  if old_refs then
    local old_run = release(ns, old_refs, delta, -1)
    if apply and old_run ~= '' then redis.call('ZREM', z, 'u\0' .. old_run .. '\0' .. p) end
  end
  for _, v in ipairs(victims) do freed = freed + drop(ns, v, delta, apply) end
  if #victims > 0 then
    freed = freed + sweep(ns, wm, apply)
    if apply then redis.call('HSET', h, 'x\0' .. ns, wm) end
  end
  if apply then
    local fields = {'c\0' .. p, record, 'v\0' .. p, refs}
    for i = 0, nb - 1 do
      fields[#fields + 1] = 'b\0' .. ns .. '\0' .. ARGV[10 + 2 * i]
      fields[#fields + 1] = ARGV[11 + 2 * i]
    end
    batched('HSET', h, fields)
    local run = split(refs)[1]
    if run ~= '' then
      redis.call('ZADD', z, 0, 'c\0' .. p, 0, 'u\0' .. run .. '\0' .. p)
    else
      redis.call('ZADD', z, 0, 'c\0' .. p)
    end
    if old_root and old_root ~= root then
      redis.call('HDEL', h, 'p\0' .. p)
      redis.call('ZREM', z, 'p\0' .. old_root .. '\0' .. p)
    end
    if ns ~= '' and root ~= '' then
      redis.call('HSET', h, 'p\0' .. p, root)
      redis.call('ZADD', z, 0, 'p\0' .. root .. '\0' .. p)
    end
  end
  return freed + settle(delta, apply)
end
-- plan(false) only reads (what the put would free, for the cap), and runs first even under the
-- cap: Redis keeps what a script wrote before an error, so a thread whose index is corrupt
-- must fail in the dry run, before plan(true) writes anything.
local total = used + add - plan(false)
if total > cap then return {-1, total, cap} end
total = used + add - plan(true)
if ns == '' then  -- a root checkpoint: no subgraph checkpoint outlives its root
  local delta = {}
  local freed = drop_strays(delta)
  total = total - freed - settle(delta, true)
end
redis.call('HSET', h, 'bytes', total)
expire(ttl)
return {1, total, #victims}
"""
)

# Store pending writes of one checkpoint. ARGV: ttl ms, cap, ns, id, root (as for a
# checkpoint), upsert 1|0, n, then n groups of (task id, idx, value). With upsert a write
# replaces the one of the same (task, idx); without, a stored one (or an earlier one of the
# batch) is kept. Writes of a checkpoint that was pruned are not stored ({0, bytes}).
# Returns {1, bytes} or {-1, bytes it would hold, cap}; bytes count what is stored.
CHECKPOINT_WRITES_LUA = (
    _CHECKPOINT_LIB
    + r"""
local ttl, cap, ns, id, root = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local upsert, n = ARGV[6] == '1', tonumber(ARGV[7])
local alive = present(true)
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
if ns ~= '' and orphaned(alive, root) then return {0, used} end
if redis.call('HEXISTS', h, 'c\0' .. ns .. '\0' .. id) == 0 and pruned(ns, id, root) then return {0, used} end
local add, held, todo = 0, {}, {}
for i = 0, n - 1 do
  local f = 'w\0' .. ns .. '\0' .. id .. '\0' .. ARGV[8 + 3 * i] .. '\0' .. ARGV[9 + 3 * i]
  local v = ARGV[10 + 3 * i]
  local old = held[f] or redis.call('HSTRLEN', h, f)
  if old == 0 or upsert then
    add = add + #v - old
    held[f] = #v
    todo[#todo + 1] = {f, v}
  else
    held[f] = old
  end
end
if used + add > cap then return {-1, used + add, cap} end
local fields, members = {}, {}
for i, fv in ipairs(todo) do
  fields[2 * i - 1], fields[2 * i] = fv[1], fv[2]
  members[2 * i - 1], members[2 * i] = 0, fv[1]
end
batched('HSET', h, fields)
batched('ZADD', z, members)
redis.call('HSET', h, 'bytes', used + add)
expire(ttl)
return {1, used + add}
"""
)

# Read one checkpoint (ARGV: ns, id, root as for put_writes) or the newest of a namespace
# (id ''). Returns {member, record, refs, blobs, writes}; {'pruned', watermark} for a
# checkpoint asked for by id that was pruned; nil for none.
CHECKPOINT_GET_LUA = (
    _CHECKPOINT_LIB
    + r"""
local ns, id = ARGV[1], ARGV[2]
if not present(false) then return nil end
if id == '' then
  local last = redis.call('ZREVRANGEBYLEX', z, '(c\0' .. ns .. '\1', '[c\0' .. ns .. '\0', 'LIMIT', 0, 1)
  if #last == 0 then return nil end
  return fetch(ns, id_of(last[1]))
end
local entry = fetch(ns, id)
if entry then return entry end
local wm = pruned(ns, id, ARGV[3])
if wm then return {'pruned', wm} end
return nil
"""
)

# A page of checkpoints, newest first. ARGV: max, min (ZREVRANGEBYLEX bounds), count,
# before id ('' none). Returns {last member scanned or '', members scanned, entries...}.
CHECKPOINT_LIST_LUA = (
    _CHECKPOINT_LIB
    + r"""
if not present(false) then return {'', 0} end
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

# Remove the checkpoints (and writes, and blobs no longer referenced) of some runs, and the
# subgraph checkpoints that ran under a root checkpoint removed. ARGV: run ids. Returns how
# many checkpoints were removed.
CHECKPOINT_DELETE_RUNS_LUA = (
    _CHECKPOINT_LIB
    + r"""
if not present(true) then return 0 end
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
local delta, freed, removed = {}, 0, 0
for _, run in ipairs(ARGV) do
  local lo, hi = '[u\0' .. run .. '\0', '(u\0' .. run .. '\1'
  for _, m in ipairs(redis.call('ZRANGEBYLEX', z, lo, hi)) do
    local ns, id = string.match(m, '^u%z[^%z]*%z(.*)%z([^%z]*)$')
    local f, n = drop(ns, id, delta, true)
    freed, removed = freed + f, removed + n
  end
end
if removed > 0 or freed > 0 then
  freed = freed + settle(delta, true)
  redis.call('HSET', h, 'bytes', used - freed)
end
return removed
"""
)

# Keep only the newest checkpoint of each namespace (ARGV[1] 'keep_latest'), or remove the
# thread ('delete'). The root namespace goes first: a root checkpoint dropped takes the
# subgraph checkpoints that ran under it. Each namespace pruned gets its watermark. Returns
# how many checkpoints were removed.
CHECKPOINT_PRUNE_LUA = (
    _CHECKPOINT_LIB
    + r"""
if ARGV[1] == 'delete' then
  local n = redis.call('ZLEXCOUNT', z, '[c\0', '(c\1')
  redis.call('DEL', h, z)
  return n
end
if not present(true) then return 0 end
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
local delta, freed, removed = {}, 0, 0
local function keep_newest(ns, ids)
  if #ids < 2 then return end
  for i = 1, #ids - 1 do
    local f, n = drop(ns, ids[i], delta, true)
    freed, removed = freed + f, removed + n
  end
  local wm = redis.call('HGET', h, 'x\0' .. ns)
  if not wm or wm < ids[#ids - 1] then wm = ids[#ids - 1] end
  freed = freed + sweep(ns, wm, true)
  redis.call('HSET', h, 'x\0' .. ns, wm)
end
local roots = {}
for _, m in ipairs(redis.call('ZRANGEBYLEX', z, '[c\0\0', '(c\0\1')) do roots[#roots + 1] = id_of(m) end
keep_newest('', roots)
local by_ns, order = {}, {}
for _, m in ipairs(redis.call('ZRANGEBYLEX', z, '[c\0', '(c\1')) do
  local ns, id = string.match(m, '^c%z(.*)%z([^%z]*)$')
  if ns ~= '' then
    if not by_ns[ns] then
      by_ns[ns] = {}
      order[#order + 1] = ns
    end
    table.insert(by_ns[ns], id)
  end
end
for _, ns in ipairs(order) do keep_newest(ns, by_ns[ns]) end
if removed > 0 or freed > 0 then
  freed = freed + settle(delta, true)
  redis.call('HSET', h, 'bytes', used - freed)
end
return removed
"""
)

# Everything of a thread, for copying it: {hash fields and values, zset members}.
CHECKPOINT_READ_ALL_LUA = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {{}, {}} end
return {redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1)}
"""

# Merge a copied thread into this one. ARGV: ttl ms, cap, n fields, n (field, value) pairs,
# then zset members. Reference counts and bytes are recounted; a watermark is the newer of
# the two. Returns {1, bytes} or {-1, bytes it would hold, cap} (nothing written).
CHECKPOINT_COPY_LUA = (
    _CHECKPOINT_LIB
    + r"""
local ttl, cap, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
present(true)
local used, bad = used_bytes()
if not used then return redis.error_reply(bad) end
local add = 0
for i = 0, n - 1 do
  local kind = string.sub(ARGV[4 + 2 * i], 1, 1)
  if kind ~= 'x' and kind ~= 'p' then
    add = add + #ARGV[5 + 2 * i] - redis.call('HSTRLEN', h, ARGV[4 + 2 * i])
  end
end
if used + add > cap then return {-1, used + add, cap} end
for i = 0, n - 1 do
  local f, v = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  local cur = string.sub(f, 1, 1) == 'x' and redis.call('HGET', h, f)
  if not cur or cur < v then redis.call('HSET', h, f, v) end
end
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
