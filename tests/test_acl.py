"""Least privilege: each component runs as a Redis user holding only the rules statekit.acl gives."""

from __future__ import annotations

import asyncio

import pytest

from statekit import AccessDenied, LifecyclePolicy, Migrations, ResilientStore, SessionStore, connect
from statekit.acl import CLUSTER_CLIENT, COMPONENTS, missing_rule, rules, setuser
from statekit.workbook.examples import support_agent_migrations


def test_every_component_has_rules_under_its_namespace_only():
    for component in COMPONENTS:
        r = rules(component, "app")
        assert r.keys == ("app:*",) and r.commands and r.why
        assert set(CLUSTER_CLIENT) <= set(r.commands), "what a cluster client sends at start"
    line = setuser("svc", ["session_store", "health_scan"], "app", password="pw")
    assert line.startswith("ACL SETUSER svc reset on >pw resetkeys resetchannels -@all ~app:* ")
    assert line.count("+evalsha") == 1 and "+scan" in line and "+memory|usage" in line
    with pytest.raises(ValueError, match="unknown component"):
        rules("everything", "app")


def test_a_noperm_reply_names_the_rule_to_add():
    assert missing_rule("NOPERM User app has no permissions to run the 'evalsha' command") == "+evalsha"
    assert missing_rule("User app has no permissions to access one of the keys used as arguments").startswith("~")


@pytest.fixture
def as_user(redis_server):
    """A function that creates a user from statekit.acl's line and returns its URL."""
    admin = redis_server.client()
    admin.flushall()
    made = []

    def make(components, namespace):
        name = f"u{len(made)}"
        admin.execute_command(*setuser(name, components, namespace, password="pw").split())
        made.append(name)
        return redis_server.url.replace("redis://", f"redis://{name}:pw@")

    yield make
    for name in made:
        admin.acl_deluser(name)


@pytest.mark.realredis
def test_the_stores_run_with_only_their_rules_and_only_their_namespace(as_user):
    url = as_user(["session_store"], "app")
    policy = LifecyclePolicy(window_turns=2, fold_batch=1)
    store = SessionStore(connect(url), policy, namespace="app", migrations=support_agent_migrations)
    for i in range(5):
        store.append_turn("s", {"role": "user", "content": f"turn {i}"})
    assert len(store.load_context("s").turns) == 2
    store.update_state("s", lambda s: {"ticket_id": "T-1", "customer_id": 7, "escalated": False})
    assert store.get_state("s")[1] == 1 and store.tag_region("s", "eu") and store.delete("s")
    resilient = ResilientStore(SessionStore(connect(url), policy, namespace="app"), timeout_ms=500)
    resilient.append_turn("r", {"n": 1})
    assert resilient.load_context("r").source == "store"
    other = SessionStore(connect(url), policy, namespace="other")
    with pytest.raises(AccessDenied, match="keys") as denied:
        other.append_turn("s", {"n": 1})
    assert "~<the namespace>:*" in str(denied.value)
    with pytest.raises(AccessDenied):
        other.load_context("s")
    # the resilient store does not hide a refusal behind a degraded mode
    refused = ResilientStore(other, timeout_ms=500)
    with pytest.raises(AccessDenied):
        refused.append_turn("s", {"n": 1})
    assert refused.mode == "normal"

    async def run_async():
        from statekit.aio import AsyncSessionStore, connect_async

        client = connect_async(url)
        astore = AsyncSessionStore(client, policy, namespace="app")
        await astore.append_turn("a", {"n": 1})
        ctx = await astore.load_context("a")
        await client.aclose()
        return ctx

    assert asyncio.run(run_async()).turns == [{"n": 1}]


@pytest.mark.realredis
def test_a_missing_command_is_named_with_the_rule_to_add(redis_server):
    admin = redis_server.client()
    admin.acl_setuser("partial", enabled=True, passwords=["+pw"], keys=["app:*"], commands=["+ping", "+evalsha"])
    try:
        store = SessionStore(connect(redis_server.url.replace("redis://", "redis://partial:pw@")), namespace="app")
        with pytest.raises(AccessDenied, match=r"add \+script\|load to the user|a command inside a script"):
            store.append_turn("s", {"n": 1})
    finally:
        admin.acl_deluser("partial")


@pytest.mark.realredis
def test_migration_and_health_run_with_their_rules(as_user, redis_server):
    from statekit.migrate import migrate_namespace, readable_by
    from statekit.observe import health_scan

    writer = SessionStore(connect(as_user(["session_store"], "app")), namespace="app", migrations=Migrations(current=1))
    for i in range(20):
        writer.update_state(f"s{i}", lambda s, i=i: {"ticket_id": f"T-{i}", "customer": str(i)})
    client = connect(as_user(["batch_migration"], "app"))
    report = migrate_namespace(client, "app", support_agent_migrations)
    assert (report.migrated, report.failed) == (20, 0)
    from statekit.workbook.examples import SupportAgentStateV3

    assert readable_by(client, "app", SupportAgentStateV3)["readable"] == 20
    health = health_scan(connect(as_user(["health_scan"], "app")), "app")
    assert health.sessions == 20 and health.keys_without_ttl == []


@pytest.mark.realredis
def test_the_saver_and_the_audit_log_run_with_their_rules(as_user):
    from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_config, generate_metadata

    from statekit.langgraph import StatekitSaver
    from statekit.observe import AuditLog

    saver = StatekitSaver.from_url(as_user(["langgraph_saver"], "lg"), namespace="lg", keep_last=2)
    config = generate_config("t")
    for i in range(3):
        cp = generate_checkpoint(channel_values={"n": i}, channel_versions={"n": str(i + 1)})
        config = saver.put(config, cp, generate_metadata(step=i), {"n": str(i + 1)})
    assert len(list(saver.list(generate_config("t")))) == 2 and saver.keys_without_ttl() == []
    saver.delete_thread("t")
    audit_client = connect(as_user(["session_store", "audit_log"], "app"))
    audit = AuditLog(audit_client, stream="app:audit", flush_every=1)
    store = SessionStore(audit_client, namespace="app", listeners=[audit])
    store.append_turn("s", {"n": 1})
    audit.flush()
    assert len(audit_client.xrange("app:audit")) >= 1


@pytest.mark.realredis
def test_the_users_a_review_prints_run_their_processes(redis_server):
    """Each `ACL SETUSER` line of `for_profile` (what the design review prints), applied as
    printed, runs its process: the application, the batch jobs, the expiry watcher (hearing
    a session expire) and the audit writer; and the application user cannot flush the data."""
    from statekit.acl import for_profile
    from statekit.migrate import migrate_namespace
    from statekit.observe import AuditLog, ExpiryWatcher, health_scan

    admin = redis_server.client()
    admin.flushall()
    users = {u["user"].rsplit("-", 1)[1]: u for u in for_profile("Support agent (EU)")}
    assert {u["namespace"] for u in users.values()} == {"Support-agent-EU"}
    urls = {}
    for kind, user in users.items():
        admin.execute_command(*user["setuser"].replace("<password>", "pw").split())
        urls[kind] = redis_server.url.replace("redis://", f"redis://{user['user']}:pw@")
    ns = "Support-agent-EU"
    try:
        watcher = ExpiryWatcher(connect(urls["watcher"]), ns).start()
        try:
            app = SessionStore(connect(urls["app"]), LifecyclePolicy(ttl_seconds=1), namespace=ns)
            audit_client = connect(urls["audit"])
            audit = AuditLog(audit_client, stream=f"{ns}:audit", flush_every=1)
            app.listeners.append(audit)
            app.append_turn("s1", {"n": 1})
            app.update_state("s1", lambda s: {"ticket_id": "T-1", "customer": "1"})
            audit.flush()
            assert len(audit_client.xrange(f"{ns}:audit")) >= 1
            ops = connect(urls["ops"])
            assert health_scan(ops, ns).sessions == 1
            assert migrate_namespace(ops, ns, support_agent_migrations).migrated == 1
            assert watcher.wait_for(1, timeout_s=30), "the watcher user hears the session expire"
            assert watcher.expired == ["s1"]
        finally:
            watcher.stop()
        with pytest.raises(AccessDenied):
            SessionStore(connect(urls["app"]), namespace="billing").load_context("s1")
        import redis

        with pytest.raises(redis.exceptions.NoPermissionError):
            connect(urls["app"]).flushall()
    finally:
        for user in users.values():
            admin.acl_deluser(user["user"])


@pytest.mark.realredis
def test_a_watcher_without_its_channel_rule_is_refused_at_start_naming_it(redis_server):
    """Found by running the watcher as its user: a refused PSUBSCRIBE used to end the
    listening thread silently, and the watcher heard nothing."""
    from statekit.observe import ExpiryWatcher

    admin = redis_server.client()
    line = setuser("nochan", ["expiry_watcher"], "app", password="pw").replace(" &__keyevent@0__:expired", "")
    admin.execute_command(*line.split())
    try:
        with pytest.raises(AccessDenied, match=r"add &__keyevent@0__:expired to the user"):
            ExpiryWatcher(connect(redis_server.url.replace("redis://", "redis://nochan:pw@")), "app").start()
    finally:
        admin.acl_deluser("nochan")
