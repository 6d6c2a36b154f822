"""The `statekit` command: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path

import redis

from statekit._version import __version__
from statekit.backends import URL_FORMS, redact_url
from statekit.decide.assess import Verdict as AssessVerdict
from statekit.decide.assess import assess
from statekit.decide.compat import Verdict as RolloutVerdict
from statekit.decide.profile import WorkloadProfile
from statekit.errors import ConnectionURLError, StatekitError

#: What `statekit review --fail-on` accepts: the assessment's verdicts, then the schema rollout's.
REVIEW_VERDICTS = typing.get_args(AssessVerdict) + typing.get_args(RolloutVerdict)


def _cmd_review(args: argparse.Namespace) -> int:
    from statekit.workbook.review import run_review

    reports = run_review(
        args.profiles,
        out_dir=args.out,
        redis_url=args.redis_url,
        progress=not args.quiet,
        failover_drill=args.failover_drill,
    )
    failed = []
    for r in reports:
        rollout = f", schema rollout {r.rollout}" if r.rollout else ""
        print(f"{r.name}: {r.verdict}{rollout}\n  {r.html}\n  {r.json}\n  {r.notebook}\n  {r.rules}\n  {r.dashboard}")
        failed += [f"{r.name}: {v}" for v in sorted(r.verdicts & set(args.fail_on or ()))]
    if len(reports) > 1:
        print(f"index: {Path(args.out) / 'index.html'}")
    for line in failed:
        print(f"statekit: --fail-on: {line}", file=sys.stderr)
    return 1 if failed else 0


COMPAT_EXIT = {"safe": 0, "multi-phase": 1, "breaking": 3}


def _cmd_compat(args: argparse.Namespace) -> int:
    from statekit.decide.compat import check_compatibility, load_schema

    comp = check_compatibility(load_schema(args.old), load_schema(args.new))
    if args.json:
        print(json.dumps(comp.as_dict(), indent=2))
        return COMPAT_EXIT[comp.verdict]
    print(f"{args.old} -> {args.new}: {comp.verdict} (Schema Registry mode {comp.mode})")
    for c in comp.changes:
        sides = f"{'new reads old' if c.backward else 'new cannot read old'}, " + (
            "old reads new" if c.forward else "old cannot read new"
        )
        print(f"  {c.verdict:<11} {c.field}: {c.kind}, {c.detail} ({sides})")
    for warning in comp.warnings:
        print(f"  check by hand: {warning}")
    for phase in comp.plan:
        print(f"phase {phase['phase']}, {phase['name']} (then: {phase['wait_for']})")
        for step in phase["steps"]:
            print(f"  - {step}")
    return COMPAT_EXIT[comp.verdict]


def _cmd_profile(args: argparse.Namespace) -> int:
    from statekit.decide.profile import profile_template, schema_json

    if args.action == "schema":
        sys.stdout.write(schema_json())
        return 0
    path = Path(args.out or f"{args.name}.yaml")
    if path.exists():
        raise ValueError(f"{path} exists; choose another --out or remove it")
    path.write_text(profile_template(args.name), encoding="utf-8")
    print(f"wrote {path}: edit it, then `statekit assess {path}`")
    return 0


def _cmd_assess(args: argparse.Namespace) -> int:
    results = [assess(WorkloadProfile.from_yaml(p)) for p in args.profiles]
    if args.json:
        print(json.dumps([a.as_dict() for a in results], indent=2))
    else:
        print("\n\n".join(a.as_text() for a in results))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from statekit.backends import check_reachable, connect
    from statekit.migrate import load_migrations, migrate_namespace

    migrations = load_migrations(args.migrations)
    client = connect(args.redis_url, socket_timeout=30)
    check_reachable(client, args.redis_url)
    # SCAN cannot know how many state keys lie ahead, so the bar counts without a total
    with tqdm(desc="sessions scanned", unit="session", disable=args.quiet) as bar:
        report = migrate_namespace(
            client,
            args.namespace,
            migrations,
            batch=args.batch,
            dry_run=args.dry_run,
            checkpoint=args.checkpoint,
            progress=bar.update,
            on_node=lambda name: bar.set_postfix_str(f"node {name}"),
        )
    verb = "would migrate" if args.dry_run else "migrated"
    print(
        f"{report.scanned:,} sessions with state in {args.namespace!r}: {verb} {report.migrated:,}, "
        f"already current {report.current:,}, newer than this code {report.skipped_newer:,}, "
        f"failed {report.failed:,}, changed meanwhile {report.conflicts:,}"
    )
    print("by stored version: " + ", ".join(f"v{v}: {n:,}" for v, n in sorted(report.by_source_version.items())))
    if report.seconds:
        print(f"{report.rate:,.0f} sessions per second")
    for error in report.errors:
        print(f"  {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    return 1 if report.failed else 0


def _cmd_health(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from statekit.backends import check_reachable, connect
    from statekit.observe.health import health_scan

    retention, regions = args.retention_days, args.allowed_region or None
    if args.profile:
        profile = WorkloadProfile.from_yaml(args.profile)
        retention = retention or profile.compliance.retention_days
        regions = regions or profile.compliance.allowed_regions
    client = connect(args.redis_url, socket_timeout=30)
    check_reachable(client, args.redis_url)
    # every key of the database is an upper bound of the namespace's keys that SCAN returns
    try:
        total = client.dbsize() or None
    except redis.exceptions.NoPermissionError:
        total = None  # a user without DBSIZE: the bar counts without a total
    with tqdm(
        total=total,
        desc="keys scanned (of the database's)",
        unit="key",
        disable=args.quiet or args.json,
    ) as bar:
        report = health_scan(
            client,
            args.namespace,
            retention_days=retention,
            allowed_regions=regions,
            audit_stream=args.audit_stream,
            progress=bar.update,
            on_node=lambda name: bar.set_postfix_str(f"node {name}"),
        )
    failing = 1 if args.fail_on == "findings" and report.findings else 0
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return failing
    print(f"{report.sessions:,} sessions in {args.namespace!r}, scanned in {report.seconds:.2f} s (read-only)")
    if report.size_percentiles:
        print("stored bytes per session: " + ", ".join(f"{k} {v:,.0f}" for k, v in report.size_percentiles.items()))
    if report.sampled_memory_bytes:
        s = report.sampled_memory_bytes
        print(
            f"Redis memory per session (MEMORY USAGE, {s['sessions_sampled']} sampled): "
            f"mean {s['mean']:,.0f}, p99 {s['p99']:,.0f} bytes"
        )
    if report.biggest:
        print("biggest: " + ", ".join(f"{sid} ({size:,} B)" for sid, size in report.biggest[:5]))
    for finding in report.findings or ["no findings"]:
        print(f"- {finding}")
    for note in report.notes:
        print(f"  ({note})")
    return failing


def _dictionary_size(text: str) -> int:
    """A dictionary size for `statekit dict train`: zstd's trainer needs room for its tables, and
    more than a megabyte buys nothing for records of a few KB (and could exhaust memory)."""
    value = _positive_int(text)
    if not 1024 <= value <= 1 << 20:
        raise argparse.ArgumentTypeError(f"{value} bytes: a dictionary size from 1024 to 1048576")
    return value


def _cmd_dict(args: argparse.Namespace) -> int:
    from statekit.backends import check_reachable, connect
    from statekit.store import dictionaries

    client = connect(args.redis_url, socket_timeout=30)
    check_reachable(client, args.redis_url)
    if args.dict_command == "train":
        trained = dictionaries.train(client, args.namespace, size=args.size, sample=args.sample, seed=args.seed)
        report = {
            "namespace": args.namespace,
            "dictionary": trained.dict_id,
            "bytes": trained.size,
            "trained_on": trained.samples,
            "held_out": trained.held_out,
            "ratio_zstd": round(trained.ratio_zstd, 3),
            "ratio_dictionary": round(trained.ratio_dict, 3),
        }
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(
                f"dictionary {trained.dict_id} ({trained.size:,} bytes) stored for {args.namespace!r} and made the "
                f"newest, trained on {trained.samples:,} records; on {trained.held_out:,} held out: "
                f"{trained.ratio_zstd:.2f}x with zstd alone, {trained.ratio_dict:.2f}x with the dictionary "
                f"({trained.raw_bytes:,} -> {trained.zstd_bytes:,} -> {trained.dict_bytes:,} bytes)"
            )
        return 0
    if args.dict_command == "list":
        rows = dictionaries.listing(client, args.namespace)
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"no dictionaries in {args.namespace!r}")
        for row in [] if args.json else rows:
            newest = " (newest: writers use it)" if row["newest"] else ""
            print(f"{row['id']}: {row['bytes']:,} bytes, named by {row['records']:,} stored values{newest}")
        return 0
    dictionaries.check_retirable(client, args.namespace, args.id, grace_s=args.grace)
    if args.rewrite:
        counts = dictionaries.rewrite(client, args.namespace, args.id)
        print(
            f"rewrote {counts['rewritten']:,} stored values of {args.namespace!r} that named dictionary {args.id} "
            f"with the newest ({counts['changed']:,} changed meanwhile, {counts['failed']:,} unreadable)"
        )
    dictionaries.retire(client, args.namespace, args.id, grace_s=args.grace)
    print(f"dictionary {args.id} of {args.namespace!r} retired (no stored value named it)")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from statekit.backends import check_reachable, connect
    from statekit.decide.calibrate import calibrate

    profile = WorkloadProfile.from_yaml(args.profile)
    client = connect(args.redis_url, socket_timeout=30)
    check_reachable(client, args.redis_url)
    replica = None
    if args.replica_url:
        replica = connect(args.replica_url, socket_timeout=30)
        check_reachable(replica, args.replica_url)
    quiet = args.quiet or args.json

    def wait(seconds: float) -> None:
        """The sampling window, counted down on stderr."""
        with tqdm(total=round(seconds), desc="sampling window", unit="s", disable=quiet) as bar:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(1.0, left))
                bar.n = round(seconds - max(0.0, end - time.monotonic()))
                bar.refresh()

    # SCAN cannot know how many sessions lie ahead, so the bar counts without a total
    with tqdm(desc="sessions found", unit="session", disable=quiet) as bar:
        cal = calibrate(
            client,
            args.namespace,
            profile,
            sample=args.sample,
            window_s=args.window,
            tolerance=args.tolerance,
            replica=replica,
            metrics=args.metrics,
            seed=args.seed,
            wait=wait,
            progress=bar.update,
            on_node=lambda name: bar.set_postfix_str(f"node {name}"),
        )
    arrivals = cal.measurement.estimates.get("new_sessions_per_s")
    if cal.measurement.sessions == 0 and not (arrivals and arrivals.n):
        raise StatekitError(
            f"namespace {args.namespace!r} holds no sessions on {redact_url(args.redis_url)}: nothing to calibrate"
        )
    if args.write_profile:
        Path(args.write_profile).write_text(cal.profile_yaml(), encoding="utf-8")
    if args.report:
        from statekit.workbook.calibration import write_report

        write_report(cal, args.report)
    written = [p for p in (args.write_profile, args.report) if p]
    if args.review:
        from statekit.workbook.review import run_review

        out = Path(args.review)
        out.mkdir(parents=True, exist_ok=True)
        calibrated = out / f"{profile.service}.calibrated.yaml"
        calibrated.write_text(cal.profile_yaml(), encoding="utf-8")
        figures = out / f"{profile.service}.calibration.json"
        figures.write_text(json.dumps(cal.as_dict(), indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
        # the review's own demonstrations run on an embedded server: calibrate writes nothing to URL
        (files,) = run_review([calibrated], out_dir=out, redis_url="fakeredis://", progress=False, calibration=figures)
        written += [str(calibrated), str(figures), str(files.html)]
    failing = 1 if args.fail_on == "drift" and cal.flips() else 0
    if args.json:
        print(json.dumps(cal.as_dict(), indent=2, default=str, allow_nan=False))
    else:
        from statekit.workbook.calibration import render_text

        print(render_text(cal))
        for path in written:
            print(f"wrote {path}")
    if failing:
        print(f"statekit: --fail-on drift: {len(cal.flips())} decisions flip", file=sys.stderr)
    return failing


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


def _cmd_network_drill(args: argparse.Namespace) -> int:
    from statekit.drills.network import NETWORK_DRILLS, network_drills

    profile = WorkloadProfile.from_yaml(args.profile)
    result = network_drills(profile, args.redis_url, drills=args.drill or NETWORK_DRILLS)
    # a drill whose store was not normal, with its buffer empty, when the drill ended did not recover:
    # its buffered turns were never stored (they count as lost), and the exit status says so
    stuck = [n for n, d in result["drills"].items() if d["mode_after"] != "normal" or d["turns"]["still_buffered"]]
    if args.json:
        print(json.dumps(result, indent=2))
        return 1 if stuck else 0
    for name, d in result["drills"].items():
        st, br, turns = d["settings"], d["breaker"], d["turns"]
        print(f"{name}: {d['impairment']}")
        print(f"  settings from {d['profile']}: timeout {st['timeout_ms']} ms, breaker opens after "
              f"{st['fail_max']} failures, probes every {st['reset_timeout_s']} s")  # fmt: skip
        for phase, ops in d["phases"].items():
            for op, f in ops.items():
                if f["calls"]:
                    saw = ", ".join(f"{k} {v}" for k, v in sorted(f["saw"].items()))
                    print(f"  {phase:<8} {op:<12} {f['calls']:>4} calls  p50 {f['p50_ms']:>8.2f} ms  "
                          f"p99 {f['p99_ms']:>8.2f} ms  ({saw})")  # fmt: skip
        recovered = (
            f"normal again {d['recovered_s']} s after the link healed"
            if name not in stuck
            else f"NOT recovered: still {d['mode_after']} {d['recovered_s']} s after the link healed, "
            f"{turns['still_buffered']} turns still buffered (never stored: counted as lost)"
        )
        print(f"  breaker opened {br['opened']}x, closed again {br['closed_again']}x; "
              f"raised to the application: {len(d['raised_to_application'])}; turns acknowledged "
              f"{turns['acknowledged']}, lost {turns['lost']}, duplicated {turns['duplicated']}; "
              f"{recovered}")  # fmt: skip
    if stuck:
        print(f"statekit: error: the store did not recover after the {', '.join(stuck)} drill(s)", file=sys.stderr)
    return 1 if stuck else 0


def _cmd_app(args: argparse.Namespace) -> int:
    import shutil

    from statekit._optional import require
    from statekit.backends import check_reachable, connect

    require("voila", extra="workbook,app", what="statekit app")  # the `app` extra installs Voila
    profile = Path(args.profile or "data/profiles/support_agent.yaml")
    if not profile.exists():
        raise StatekitError(f"{profile}: no such profile (give one: statekit app PROFILE.yaml)")
    WorkloadProfile.from_yaml(profile)  # an invalid profile fails here, before a server starts
    if args.calibrate:
        from statekit.keys import validate_namespace

        validate_namespace(args.calibrate)
    client = connect(args.redis_url)
    try:
        check_reachable(client, args.redis_url)
    finally:
        client.close()
    notebook = Path(__file__).resolve().parent / "workbook" / "notebooks" / "live_review.ipynb"
    env = {
        **os.environ,
        "STATEKIT_APP": "1",
        "STATEKIT_APP_PROFILE": str(profile.resolve()),
        "STATEKIT_APP_REDIS_URL": args.redis_url,
        "STATEKIT_APP_OUT": str(Path(args.out).resolve()),
        **({"STATEKIT_APP_CALIBRATE": args.calibrate} if args.calibrate else {}),
    }
    voila = shutil.which("voila", path=str(Path(sys.executable).parent)) or shutil.which("voila")
    cmd = [voila or "voila", str(notebook), f"--port={args.port}", "--Voila.ip=127.0.0.1", "--no-browser",
           "--show_tracebacks=True"]  # fmt: skip
    print(f"statekit app: http://127.0.0.1:{args.port}/ ({profile}, {redact_url(args.redis_url)}); Ctrl-C stops it")
    return _serve_until_stopped(cmd, env)


def _cmd_workshop(args: argparse.Namespace) -> int:
    from statekit._optional import require

    if args.target[:1] == ["board"]:
        if len(args.target) != 2:
            raise StatekitError("statekit workshop board URL: give the trainer's Redis URL, e.g. redis://host:6379/0")
        from statekit.workbook.labs.board import progress, render, watch

        if args.watch:
            try:
                watch(args.target[1], args.watch)
            except KeyboardInterrupt:
                return 0
        print(render(progress(args.target[1])))
        return 0
    if len(args.target) > 1:
        raise StatekitError("statekit workshop [DIR] or statekit workshop board URL")
    directory = args.target[0] if args.target else "statekit-workshop"
    require("jupyterlab", extra="workshop", what="statekit workshop")
    require("matplotlib", extra="workshop", what="statekit workshop")
    from statekit.workbook.labs.workshop import jupyter_lab_command, prepare

    done = prepare(directory, trainer_dir=args.trainer_notebooks)
    for path in done["written"]:
        print(f"statekit workshop: wrote {path}")
    for path in done["kept"]:
        print(f"statekit workshop: kept {path} (already there: your work is not overwritten)")
    if args.prepare_only:
        return 0
    cmd = jupyter_lab_command(directory, port=args.port, open_browser=not args.no_browser)
    print(f"statekit workshop: JupyterLab on {directory}, labs on embedded fakeredis; Ctrl-C stops it")
    return _serve_until_stopped(cmd, dict(os.environ))


class _Stopped(Exception):
    """SIGTERM or SIGINT reached `statekit app`."""


def _serve_until_stopped(cmd: list[str], env: dict[str, str]) -> int:
    """Run the server `cmd` in a session of its own until it exits, or until this process gets
    SIGTERM or SIGINT; then stop it and every process it started (Voila's kernels run in
    sessions of their own), so nothing is left serving the port. 0 when stopped by a signal."""

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, stop) for sig in signals}
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        return proc.wait()
    except _Stopped:
        return 0
    finally:
        for sig in signals:  # a second Ctrl-C does not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        if proc is not None:
            _stop_process_tree(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_process_tree(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM to `proc`'s process group and to every process below it (seen before it goes),
    then SIGKILL to whatever is still there after `grace_s`."""
    below = _descendants(proc.pid)
    _send(proc.pid, signal.SIGTERM, group=True)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _send(proc.pid, signal.SIGKILL, group=True)
        proc.wait()
    alive = [p for p in below if _running(*p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _ in alive:
            _send(pid, sig, group=_leads_group(pid))  # a kernel leads a session of its own
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)  # not our children, so not ours to wait for: watch /proc instead
            alive = [p for p in alive if _running(*p)]


def _send(pid: int, sig: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below `pid`, from /proc (none where there is no /proc)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        fields = _proc_stat(entry.name) if entry.name.isdigit() else None
        if fields:
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _running(pid: int, started: str) -> bool:
    """Is the process `pid` that started at `started` still running (not a zombie, not reused)?"""
    fields = _proc_stat(pid)
    return bool(fields) and fields[0] != "Z" and fields[19] == started


def _leads_group(pid: int) -> bool:
    fields = _proc_stat(pid)
    return bool(fields) and fields[2] == str(pid)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statekit",
        description="Decide and run the state of AI agents on Redis: assess a workload, render a design review.",
        epilog="Redis URL forms:\n  " + "\n  ".join(URL_FORMS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"statekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    review = sub.add_parser("review", help="render the design-review report (HTML, notebook, JSON) for profiles")
    review.add_argument("profiles", nargs="+", metavar="PROFILE", help="workload profile YAML files")
    review.add_argument("--out", default="reports", help="directory for the reports (default: reports)")
    review.add_argument(
        "--redis-url", default="fakeredis://", help="Redis to run against (default: embedded fakeredis://)"
    )
    review.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    review.add_argument(
        "--failover-drill",
        action="store_true",
        help="first run the failover drills (needs redis-server; starts and kills its own cluster) "
        "and report the writes they lost",
    )
    review.add_argument(
        "--fail-on",
        action="append",
        metavar="VERDICT",
        choices=REVIEW_VERDICTS,
        help="exit 1 when a profile's verdict, or its schema rollout's, is VERDICT (repeatable): "
        + ", ".join(REVIEW_VERDICTS),
    )
    review.set_defaults(func=_cmd_review)

    compat = sub.add_parser(
        "compat",
        help="can the new state schema roll out? exit 0 safe, 1 multi-phase, 3 breaking",
        description="Compare two versions of a state schema and print the verdict and the rollout plan. "
        "Exit status: 0 safe (deploy in any order), 1 multi-phase (expand/contract), 3 breaking, "
        "2 an error (a schema that cannot be loaded).",
    )
    compat.add_argument("old", metavar="OLD", help="module:Model (a pydantic model) or a JSON Schema file")
    compat.add_argument("new", metavar="NEW", help="module:Model (a pydantic model) or a JSON Schema file")
    compat.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compat.set_defaults(func=_cmd_compat)

    prof = sub.add_parser("profile", help="workload profiles: their JSON Schema, or a commented starting profile")
    prof_sub = prof.add_subparsers(dest="action", required=True, metavar="ACTION")
    prof_sub.add_parser("schema", help="print the profile's JSON Schema (for editors and CI validators)")
    init = prof_sub.add_parser("init", help="write a commented starting profile that statekit assess accepts")
    init.add_argument("name", metavar="NAME", help="the service's name (also the file name, NAME.yaml)")
    init.add_argument("--out", metavar="FILE", help="where to write it (default NAME.yaml; never overwritten)")
    prof.set_defaults(func=_cmd_profile)

    ass = sub.add_parser("assess", help="does this workload need state? a verdict with reasons and costs")
    ass.add_argument("profiles", nargs="+", metavar="PROFILE", help="workload profile YAML files")
    ass.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ass.set_defaults(func=_cmd_assess)

    mig = sub.add_parser("migrate", help="migrate every session's structured state to the current schema version")
    mig.add_argument("redis_url", metavar="URL", help="the Redis holding the sessions")
    mig.add_argument("--namespace", required=True, help="the SessionStore namespace")
    mig.add_argument("--migrations", required=True, metavar="MODULE:ATTR", help="your Migrations object")
    mig.add_argument("--batch", type=_positive_int, default=500, help="keys per SCAN and pipeline (default 500)")
    mig.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    mig.add_argument("--checkpoint", metavar="FILE", help="save the SCAN cursor here; rerun to resume")
    mig.add_argument("--json", action="store_true", help="print the report as JSON too")
    mig.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    mig.set_defaults(func=_cmd_migrate)

    health = sub.add_parser("health", help="scan a live Redis, read-only: sizes, TTLs, retention, residency")
    health.add_argument("redis_url", metavar="URL", help="the Redis holding the sessions")
    health.add_argument("--namespace", required=True, help="the SessionStore namespace")
    health.add_argument("--profile", help="take retention and allowed regions from this workload profile")
    health.add_argument("--retention-days", type=float, help="flag sessions older than this")
    health.add_argument("--allowed-region", action="append", help="an allowed region (repeatable)")
    health.add_argument("--audit-stream", help="also check this audit stream's retention")
    health.add_argument("--json", action="store_true", help="print the report as JSON")
    health.add_argument(
        "--fail-on", choices=["findings"], help="exit 1 when the scan finds anything (keys without TTL, retention...)"
    )
    health.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    health.set_defaults(func=_cmd_health)

    dct = sub.add_parser(
        "dict",
        help="zstd dictionaries of a namespace: train one on live records, list them, retire one",
        description="A namespace's zstd dictionaries (statekit.codec.Codec compresses with the newest). "
        "Exit status: 0, or 2 on an error (unreachable server, bad URL, too few records, a dictionary in use).",
    )
    dct_sub = dct.add_subparsers(dest="dict_command", required=True)
    train = dct_sub.add_parser("train", help="sample live records (SCAN), train a dictionary, store it as the newest")
    train.add_argument("redis_url", metavar="URL", help="the Redis holding the records")
    train.add_argument("--namespace", required=True, help="the SessionStore (or StatekitSaver) namespace")
    train.add_argument("--size", type=_dictionary_size, default=32_768,
                       help="dictionary bytes, 1024 to 1048576 (default 32768)")  # fmt: skip
    train.add_argument("--sample", type=_positive_int, default=5_000, help="records sampled (default 5000)")
    train.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    lst = dct_sub.add_parser("list", help="each dictionary, its size, and how many stored values name it")
    lst.add_argument("redis_url", metavar="URL", help="the Redis holding the records")
    lst.add_argument("--namespace", required=True, help="the namespace")
    lst.add_argument("--json", action="store_true", help="print the list as JSON")
    ret = dct_sub.add_parser("retire", help="remove a dictionary no stored value names (refused while one does)")
    ret.add_argument("redis_url", metavar="URL", help="the Redis holding the records")
    ret.add_argument("id", type=int, help="the dictionary id (statekit dict list)")
    ret.add_argument("--namespace", required=True, help="the namespace")
    ret.add_argument(
        "--rewrite",
        action="store_true",
        help="first write the values that name it again with the newest dictionary (a batch migration)",
    )
    ret.add_argument(
        "--grace",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="refuse until the newest dictionary has been the newest this long (default 600: twice a "
        "writer's default refresh_s, so no writer still uses the old one)",
    )
    dct.set_defaults(func=_cmd_dict)

    cal = sub.add_parser(
        "calibrate",
        help="measure a live namespace, read-only, against its workload profile; the decisions that flip",
        description="Measure a live namespace (read-only: sessions held, bytes per session, turns per session, "
        "bytes per turn, session length, TTLs, schema versions; new sessions and appends per second over a "
        "sampling window; optionally replica lag and StateMetrics figures), hold each against the profile's "
        "assumption, and re-run the review's decisions with the measured numbers. Exit status: 0, 1 when "
        "--fail-on drift and a decision flips, 2 on an error (unreachable server, a user without the rules "
        "of statekit.acl's 'calibrate' component, a bad profile).",
    )
    cal.add_argument("redis_url", metavar="URL", help="the Redis holding the sessions")
    cal.add_argument("--namespace", required=True, help="the SessionStore namespace")
    cal.add_argument("--profile", required=True, help="the workload profile YAML the namespace was designed for")
    cal.add_argument("--sample", type=_positive_int, help="read at most N sessions, at random (default: all)")
    cal.add_argument("--window", type=_seconds, default=60.0, metavar="SECONDS",
                     help="sampling window for the rates (default 60; 0 skips the rates)")  # fmt: skip
    cal.add_argument("--tolerance", type=_fraction, default=0.25, help="relative drift flagged (default 0.25)")
    cal.add_argument("--replica-url", help="a replica of URL: measure its lag (a real server)")
    cal.add_argument("--metrics", metavar="FILE|URL", help="a Prometheus exposition of StateMetrics")
    cal.add_argument("--write-profile", metavar="FILE", help="write the calibrated profile here")
    cal.add_argument("--report", metavar="FILE", help="write the calibration as an HTML page here")
    cal.add_argument(
        "--review",
        metavar="DIR",
        help="write the calibrated profile and its full design review (HTML, notebook, JSON) here",
    )
    cal.add_argument("--seed", type=int, default=0, help="seed of the random sample (default 0)")
    cal.add_argument("--json", action="store_true", help="print the calibration as JSON")
    cal.add_argument("--fail-on", choices=["drift"], help="exit 1 when a decision of the review flips")
    cal.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cal.set_defaults(func=_cmd_calibrate)

    app = sub.add_parser(
        "app",
        help="the live design review: change the profile's assumptions and watch every decision follow (Voila)",
        description="Serve the live review (statekit/workbook/notebooks/live_review.ipynb) with Voila on 127.0.0.1: "
        "widgets for traffic, turns, bytes and tokens per turn, token price, window, TTL, whether the caller "
        "can resend its history, staleness per state class and the latency budget; scenarios pinned side by "
        "side; a scenario exported as a profile YAML and its static report.",
    )
    app.add_argument("profile", nargs="?", metavar="PROFILE", help="workload profile YAML "
                     "(default: data/profiles/support_agent.yaml)")  # fmt: skip
    app.add_argument(
        "--redis-url", default="fakeredis://", help="Redis to run against (default: embedded fakeredis://)"
    )
    app.add_argument("--port", type=_positive_int, default=8866, help="port on 127.0.0.1 (default 8866)")
    app.add_argument("--out", default="scenarios", help="where exported scenarios and their reports go")
    app.add_argument(
        "--calibrate",
        metavar="NAMESPACE",
        help="pin 'as profiled' against 'as measured' from this "
        "namespace of --redis-url (statekit calibrate, read-only, no sampling window)",
    )
    app.set_defaults(func=_cmd_app)

    shop = sub.add_parser(
        "workshop",
        help="the workshop's labs: the attendee's notebooks in a directory, and JupyterLab on them",
        description="Write the attendee's copy of the six labs to DIR (a notebook already there is kept) "
        "and open JupyterLab on it. The labs run on embedded fakeredis: no server, no network. Needs the "
        "workshop extra: pip install 'statekit[workshop]'. `statekit workshop board URL` shows the room's "
        "progress: the checks of notebooks whose board_url parameter is URL publish there.",
    )
    shop.add_argument("target", nargs="*", metavar="DIR | board URL",
                      help="where the notebooks go (default: ./statekit-workshop), or: board URL")  # fmt: skip
    shop.add_argument("--watch", type=float, metavar="SECONDS", help="board: print it again every SECONDS")
    shop.add_argument("--trainer-notebooks", metavar="DIR",
                      help="make the attendee's copy from the trainer's notebooks in DIR (default: the packaged copy)")  # noqa: E501  # fmt: skip
    shop.add_argument("--port", type=_positive_int, default=8888, help="JupyterLab's port on 127.0.0.1 (default 8888)")
    shop.add_argument("--no-browser", action="store_true", help="do not open a browser")
    shop.add_argument("--prepare-only", action="store_true", help="write the notebooks, do not start JupyterLab")
    shop.set_defaults(func=_cmd_workshop)

    net = sub.add_parser(
        "network-drill",
        help="run the store, set up from a profile, through a slow, half-open and flapping link",
        description="Put a TCP proxy between a ResilientStore (timeouts and breaker from the profile) and a "
        "real redis-server, impair the link, and report p50/p99 per call, what the application saw, the "
        "breaker's transitions and the turns lost or duplicated. Needs redis-server: without --redis-url "
        "one is started on a loopback port and stopped by its pid.",
    )
    net.add_argument("profile", metavar="PROFILE", help="workload profile YAML file")
    net.add_argument("--redis-url", help="a redis://host:port server to drill against (default: start one)")
    net.add_argument("--drill", action="append", choices=["latency", "half_open", "flapping"], help="repeatable")
    net.add_argument("--json", action="store_true", help="print the figures as JSON")
    net.set_defaults(func=_cmd_network_drill)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI. Whatever fails (a statekit error, an error reply or a connection failure
    from Redis, a file that cannot be written) prints one line, secrets redacted, and exits 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConnectionURLError as exc:
        message = f"{exc.brief} Expected e.g. {URL_FORMS[1]} (`statekit --help` lists every form)"
    except (StatekitError, ValueError) as exc:
        message = str(exc)
    except redis.exceptions.NoPermissionError as exc:
        message = f"the Redis user may not run a command statekit needs: {exc}"
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        message = f"Redis: {exc}"
    except OSError as exc:
        message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    # one line, as promised: a message that lists things (a profile's invalid fields) is joined
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"statekit: error: {redact_url(one_line)}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
