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
_CHECK = """
local function corrupt(key, m, fields)
  for i, name in pairs(fields) do
    if m[i] and not tonumber(m[i]) then
      return 'CORRUPT ' .. key .. ' field ' .. name .. ' is not a number'
    end
  end
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
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', log, ttl)
  if m[4] then redis.call('PEXPIRE', KEYS[3], ttl) end
  if m[5] then redis.call('PEXPIRE', KEYS[4], ttl) end
  return {0, bytes, v, 0, 0}
end
local size = bytes + #rec
if size > cap then return {-1, size, cap, 0, 0} end
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
-- slide the TTL of every key that can exist: a summary after a fold, state after a CAS
redis.call('PEXPIRE', meta, ttl)
redis.call('PEXPIRE', log, ttl)
if m[4] then redis.call('PEXPIRE', KEYS[3], ttl) end
if m[5] then redis.call('PEXPIRE', KEYS[4], ttl) end
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
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[5])) end
return {1, size}
"""
)

# Read a session's context. KEYS: meta log summary. Returns {{v, b}, log records, summary}.
# Used on Redis Cluster when a slot moves; otherwise load_context sends the same reads as
# one MULTI/EXEC transaction, which skips the Lua round trip of a large LRANGE reply.
LOAD_LUA = """
return {redis.call('HMGET', KEYS[1], 'v', 'b'), redis.call('LRANGE', KEYS[2], 0, -1), redis.call('GET', KEYS[3])}
"""

# Read structured state and its version atomically. KEYS: meta state.
# Returns {state version, blob or false}.
GET_STATE_LUA = (
    _CHECK
    + """
local m = redis.call('HMGET', KEYS[1], 'sv')
local bad = corrupt(KEYS[1], m, {'sv'})
if bad then return redis.error_reply(bad) end
return {m[1] or '0', redis.call('GET', KEYS[2])}
"""
)

# Compare-and-set structured state. KEYS: meta log summary state. ARGV: expected state
# version, blob, cap, ttl ms, now ms. Returns {1, new sv, bytes}, {0, current sv} on a
# conflict, {-1, size, cap} over the cap (nothing written).
CAS_STATE_LUA = (
    _CHECK
    + """
local meta, state = KEYS[1], KEYS[4]
local m = redis.call('HMGET', meta, 'sv', 'b', 'v')
local bad = corrupt(meta, m, {'sv', 'b', 'v'})
if bad then return redis.error_reply(bad) end
local sv = tonumber(m[1]) or 0
if sv ~= tonumber(ARGV[1]) then return {0, sv} end
local size = (tonumber(m[2]) or 0) - redis.call('STRLEN', state) + #ARGV[2]
if size > tonumber(ARGV[3]) then return {-1, size, tonumber(ARGV[3])} end
redis.call('SET', state, ARGV[2])
if not m[3] then redis.call('HSET', meta, 'c', ARGV[5]) end
redis.call('HSET', meta, 'sv', sv + 1, 'b', size, 'v', (tonumber(m[3]) or 0) + 1)
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[4])) end
return {1, sv + 1, size}
"""
)

# Write migrated state back, keeping the key's TTL, only if nobody wrote it since it was
# read. KEYS: meta state. ARGV: state version read, blob. Returns 1 written, 0 changed since.
KEEPTTL_CAS_LUA = (
    _CHECK
    + """
local m = redis.call('HMGET', KEYS[1], 'sv', 'b')
local bad = corrupt(KEYS[1], m, {'sv', 'b'})
if bad then return redis.error_reply(bad) end
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
