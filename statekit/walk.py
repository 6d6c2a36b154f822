"""One way to walk a namespace across nodes, for every batch operation of statekit.

A single server (or fakeredis) is one node. A Redis Cluster is each of its primaries: SCAN
runs on each primary's own connection (a cluster SCAN sees one node's keys), and a batch of
commands is pipelined to the node whose keys they are. A command that meets a slot on the
move (a MOVED or ASK reply, or TRYAGAIN during a migration) is sent again through the
cluster client's own routing, which follows the redirection. Each node's SCAN cursor is
kept, so a run given the cursors of an interrupted one continues where each node stopped,
and `topology()` says whether the slot map changed under a run (then keys may have moved
past a cursor, and the caller walks again: every batch operation here is idempotent).

Written by hand because redis-py's cluster client walks SCAN across nodes but pipelines
only commands it can route by itself (its cluster pipeline refuses EVALSHA), and knows
nothing of resuming a walk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from statekit.backends import backend_kind
from statekit.errors import InvalidInput
from statekit.scripts import Script

__all__ = ["Walker", "NodeBatch", "SINGLE_NODE"]

#: The node name of a single server in checkpoints and progress.
SINGLE_NODE = "server"
#: A cursor of a node whose walk is over.
DONE = -1

_REDIRECTS = (redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.TryAgainError)


@dataclass
class NodeBatch:
    """Keys one SCAN call returned on one node."""

    node: str
    keys: list[str]


@dataclass
class Walker:
    """Walk the keys matching `pattern` on every node behind `client`, `batch` keys per SCAN.

    `cursors` (node name -> cursor, -1 when that node is done) is updated after every batch;
    pass the cursors of an interrupted walk to continue it. `redirected` counts commands
    that had to follow a slot move.
    """

    client: Any
    pattern: str
    batch: int = 500
    cursors: dict[str, int] = field(default_factory=dict)
    redirected: int = 0
    on_node: Any = None  # called with a node's name when the walk reaches it (progress by node)
    # called with (node name, key bytes) for a key that is not UTF-8 (not statekit's), which the
    # walk then skips; without it such a key raises InvalidInput naming it
    on_undecodable: Any = None
    scans: int = 0  # SCAN calls made (round trips of the walk itself)

    def __post_init__(self) -> None:
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be a whole number >= 1, got {self.batch!r}")
        self.cluster = backend_kind(self.client) == "cluster"

    # -- nodes ----------------------------------------------------------------------------

    def nodes(self) -> list[tuple[str, Any]]:
        """(name, client) of each node to walk: the primaries of a cluster, else the server."""
        if not self.cluster:
            return [(SINGLE_NODE, self.client)]
        primaries = sorted(self.client.get_primaries(), key=lambda n: n.name)
        return [(node.name, self.client.get_redis_connection(node)) for node in primaries]

    def node_client(self, name: str) -> Any:
        return dict(self.nodes())[name]

    def topology(self) -> str | None:
        """A digest of the cluster's slot map (None for a single server): two equal digests
        taken around a walk mean no slot moved during it."""
        if not self.cluster:
            return None
        maps = set()
        for _, node in self.nodes():  # each node's own view: they differ while a move settles
            slots = node.execute_command("CLUSTER", "SLOTS")
            maps.add(repr(sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots)))
        return hashlib.sha1("|".join(sorted(maps)).encode()).hexdigest()

    def refresh(self) -> None:
        """Read the cluster's slot map again, so the next batches go to the right nodes."""
        if self.cluster:
            self.client.nodes_manager.initialize()

    # -- the walk -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[NodeBatch]:
        """Batches of keys, node by node; each node's cursor is saved after its batch."""
        for name, node in self.nodes():
            cursor = self.cursors.get(name, 0)
            if cursor != DONE and self.on_node is not None:
                self.on_node(name)
            while cursor != DONE:
                cursor, keys = node.scan(cursor=cursor, match=self.pattern, count=self.batch)
                self.scans += 1
                cursor = DONE if cursor == 0 else cursor
                self.cursors[name] = cursor
                if keys := self._decoded(name, keys):
                    yield NodeBatch(name, keys)

    def _decoded(self, node: str, keys: Sequence[Any]) -> list[str]:
        out = []
        for key in keys:
            if isinstance(key, bytes):
                try:
                    key = key.decode()
                except UnicodeDecodeError:
                    if self.on_undecodable is None:
                        raise InvalidInput(
                            f"key {key!r} matching {self.pattern!r} on {node} is not UTF-8: not a statekit key"
                        ) from None
                    self.on_undecodable(node, key)
                    continue
            out.append(key)
        return out

    @property
    def finished(self) -> bool:
        names = [name for name, _ in self.nodes()]
        return all(self.cursors.get(name) == DONE for name in names)

    def restart(self) -> None:
        """Walk every node again from its first key."""
        self.cursors = {}

    # -- batched commands -----------------------------------------------------------------

    def load_scripts(self, scripts: Sequence[Script]) -> None:
        """SCRIPT LOAD on every node, so pipelined EVALSHA finds them."""
        for _, node in self.nodes():
            for script in scripts:
                node.script_load(script.script)

    def execute(self, node: str, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run `commands` (each a tuple of command name and arguments) pipelined on `node`;
        the replies, in order, with an error reply in its command's place. A command that
        meets a moved slot is sent again through the cluster client, which follows it."""
        if not commands:
            return []
        client = self.node_client(node) if self.cluster else self.client
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies = pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                replies[i] = self._again(node, commands[i], reload=True)
            elif self.cluster and isinstance(reply, _REDIRECTS):
                self.redirected += 1
                replies[i] = self._again(node, commands[i])
        return replies

    def _again(self, node: str, command: tuple[Any, ...], reload: bool = False) -> Any:
        try:
            if reload:
                for _, each in self.nodes():
                    each.script_load(_SCRIPT_TEXT[command[1]])
            return self.client.execute_command(*command)
        except redis.exceptions.ResponseError as exc:
            return exc


#: Script text by SHA, for reloading one after a NOSCRIPT reply in a batch.
_SCRIPT_TEXT: dict[str, str] = {}


def evalsha(script: Script, keys: Sequence[str], *args: Any) -> tuple[Any, ...]:
    """An EVALSHA command tuple for `Walker.execute`."""
    _SCRIPT_TEXT[script.sha] = script.script
    return ("EVALSHA", script.sha, len(keys), *keys, *args)
