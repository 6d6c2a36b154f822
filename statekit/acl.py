"""Least privilege: the Redis ACL rules each statekit component needs, and nothing more.

`rules(component, namespace)` gives the key patterns, commands and channels a component uses
under its namespace, and `setuser(user, components, namespace)` the `ACL SETUSER` line that
grants them (with `resetkeys`, `resetchannels` and `-@all` first, so the user starts with
nothing). The tests run each component as such a user on a real server, and a user of one
namespace cannot read or write another's sessions through statekit (Redis checks the keys a
Lua script touches against the user's patterns too).

Every component's rules include what redis-py's cluster client sends before any command of
the component (`CLUSTER_CLIENT`), so that one printed line serves a single server, Sentinel
and a cluster alike: a review does not know which the user will apply it to, and a service
that moves to a cluster keeps its users. Those commands read only metadata (the slot map,
the command table), never a key.

A command a component needs but the user lacks comes back as `AccessDenied` naming the
command; `missing_rule(error)` says which rule to add. On a cluster that includes what the
client sends at start: `connect` (or an asyncio client's first command) raises it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from statekit.errors import missing_rule
from statekit.keys import validate_namespace
from statekit.scripts import CHECKPOINT_SCRIPTS, SCRIPTS

__all__ = ["COMPONENTS", "CLUSTER_CLIENT", "Rules", "rules", "setuser", "missing_rule", "USERS", "for_profile"]


@dataclass(frozen=True)
class Rules:
    """What a component touches: key patterns (`~`), commands (`+`) and channels (`&`)."""

    keys: tuple[str, ...]
    commands: tuple[str, ...]
    channels: tuple[str, ...] = ()
    why: str = ""


_SCRIPTS = ("evalsha", "eval", "script|load")


def _called(scripts: dict[str, Any]) -> tuple[str, ...]:
    """Every command the scripts call: Redis checks each `redis.call` against the user too, so
    the rules are read off the scripts themselves rather than written twice."""
    found: set[str] = set()
    for script in scripts.values():
        found.update(c.lower() for c in re.findall(r"redis\.call\('([A-Za-z]+)'", script.script))
    return tuple(sorted(found))


_STORE_CALLS = _called(SCRIPTS)
_SAVER_CALLS = _called(CHECKPOINT_SCRIPTS)
_STATE_CALLS = _called({k: SCRIPTS[k] for k in ("get_state", "keepttl_cas")})

#: What each component sends, by the code that sends it (`{ns}` is the namespace).
COMPONENTS: dict[str, Rules] = {
    "session_store": Rules(
        ("{ns}:*",),
        (*_SCRIPTS, *_STORE_CALLS, "multi", "exec", "lrange", "get", "del", "type", "ping"),
        why="appends, folds, state and region scripts (and the commands inside them); load_context's "
        "MULTI/HMGET/LRANGE/GET/EXEC; delete; TYPE only to name a key of the wrong type; GET of the "
        "namespace's zstd dictionaries (a store with a compressing codec)",
    ),
    "resilient_store": Rules(
        ("{ns}:*",),
        (*_SCRIPTS, *_STORE_CALLS, "multi", "exec", "lrange", "get", "del", "type", "ping"),
        why="the session store's commands, through a client of its own",
    ),
    "batch_migration": Rules(
        ("{ns}:*",),
        (*_SCRIPTS, *_STATE_CALLS, "scan", "get", "ping", "info", "cluster|slots"),
        why="SCAN of the namespace, the state read and compare-and-set scripts (and the commands "
        "inside them), GET for readable_by, PING and INFO to check the server (INFO is optional), "
        "CLUSTER SLOTS to notice a reshard on a cluster",
    ),
    "health_scan": Rules(
        ("{ns}:*",),
        ("scan", "pttl", "hmget", "memory|usage", "ping", "info", "dbsize", "xrange", "cluster|slots"),
        why="SCAN, PTTL and HMGET per batch; MEMORY USAGE on a sample (real servers); XRANGE of "
        "the audit stream when given; DBSIZE for the progress bar and INFO are optional",
    ),
    "calibrate": Rules(
        ("{ns}:*",),
        (
            "scan",
            "type",
            "hmget",
            "pttl",
            "strlen",
            "llen",
            "lindex",
            "get",
            "exists",
            "ping",
            "info",
            "cluster|slots",
        ),
        why="SCAN of the meta keys and TYPE of each (a key of another type is not a session); per sampled "
        "session HMGET of its meta, PTTL, STRLEN of summary and state, "
        "LLEN and LINDEX of the log, GET of the state (its schema version), EXISTS; INFO replication for the "
        "replica lag (the same user on the replica); nothing written",
    ),
    "expiry_watcher": Rules(
        ("{ns}:*",),
        ("psubscribe", "punsubscribe", "config|get", "config|set", "scan", "ping"),
        ("__keyevent@{db}__:expired",),
        why="keyspace notifications: CONFIG SET notify-keyspace-events Ex (an operator may set it "
        "instead and drop config|set), PSUBSCRIBE to the expired events of its database (Redis "
        "matches a PSUBSCRIBE pattern literally against the user's channel rules), SCAN to reconcile",
    ),
    "audit_log": Rules(
        ("{ns}:*",),
        ("xadd", "xrange", "xtrim"),
        why="XADD with MAXLEN/MINID trimming; XRANGE to read the trail (give the stream a name under the namespace)",
    ),
    "langgraph_saver": Rules(
        ("{ns}:*",),
        (*_SCRIPTS, *_SAVER_CALLS, "del", "scan", "pttl", "hkeys", "hget", "exists", "get", "ping"),
        why="one script per put, put_writes, get_tuple, list page, prune and copy (and the commands "
        "inside them); DEL for delete_thread; SCAN for list(None) and delete_for_runs; PTTL, HKEYS, "
        "HGET, EXISTS for keys_without_ttl and footprint; GET of the namespace's zstd dictionaries "
        "(a saver with a compressing codec)",
    ),
}


#: What redis-py's cluster client (blocking and asyncio) sends before a component's first
#: command, read off redis/cluster.py, redis/asyncio/cluster.py and redis/_parsers/commands.py:
#: CLUSTER SLOTS for the slot map (at start, and again after a MOVED or a lost node) and
#: COMMAND for the command table that routes a command by its keys (COMMAND GETKEYS for a
#: command whose keys move, which `+command` grants with it). A user refused them cannot
#: connect to a cluster; on a single server they are never sent.
CLUSTER_CLIENT = ("cluster|slots", "command")


def rules(component: str, namespace: str, db: int = 0) -> Rules:
    """The ACL rules `component` needs under `namespace` (one of `COMPONENTS`), on database `db`:
    its own and `CLUSTER_CLIENT`'s."""
    validate_namespace(namespace)
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: one of {sorted(COMPONENTS)}")
    r = COMPONENTS[component]
    channels = tuple(c.format(db=db) for c in r.channels)
    commands = tuple(dict.fromkeys((*r.commands, *CLUSTER_CLIENT)))
    return Rules(tuple(k.format(ns=namespace) for k in r.keys), commands, channels, r.why)


def setuser(
    user: str, components: list[str] | tuple[str, ...], namespace: str, password: str = "<password>", db: int = 0
) -> str:
    """An `ACL SETUSER` line granting `user` what `components` need under `namespace` (on
    database `db`), and nothing else."""
    keys: dict[str, None] = {}
    commands: dict[str, None] = {}
    channels: dict[str, None] = {}
    for component in components:
        r = rules(component, namespace, db)
        keys.update(dict.fromkeys(r.keys))
        commands.update(dict.fromkeys(r.commands))
        channels.update(dict.fromkeys(r.channels))
    parts = [
        "ACL SETUSER", user, "reset", "on", f">{password}", "resetkeys", "resetchannels", "-@all",
        *(f"~{k}" for k in keys), *(f"&{c}" for c in channels), *(f"+{c}" for c in commands),
    ]  # fmt: skip
    return " ".join(parts)


#: The Redis users a service runs as, one per kind of process, with the components each runs.
USERS: dict[str, tuple[str, ...]] = {
    "app": ("session_store", "resilient_store"),
    "ops": ("batch_migration", "health_scan"),
    "watcher": ("expiry_watcher",),
    "audit": ("audit_log",),
}


def for_profile(service: str, namespace: str | None = None, db: int = 0) -> list[dict[str, Any]]:
    """One Redis user per kind of process of `service` (its application, its operators'
    batch jobs, its expiry watcher, its audit writer), each with the `ACL SETUSER` line that
    grants what its components need under `namespace` (the service's name, made a valid
    namespace, when not given) and nothing else."""
    ns = namespace or re.sub(r"[^A-Za-z0-9_.-]+", "-", service).strip("-") or "statekit"
    validate_namespace(ns)
    return [
        {
            "user": f"{ns}-{kind}",
            "components": list(components),
            "namespace": ns,
            "setuser": setuser(f"{ns}-{kind}", components, ns, db=db),
            "why": "; ".join(f"{c}: {COMPONENTS[c].why}" for c in components),
        }
        for kind, components in USERS.items()
    ]
