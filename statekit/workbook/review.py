"""A design review: one plain dict per profile, and the report notebook that renders it.

`build_review` decides (pure computation plus a reachability check of the Redis it will
run against); `run_review` executes `notebooks/design_review.ipynb` with papermill for
each profile and writes `<name>.ipynb`, `<name>.html` (no code cells) and `<name>.json`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statekit._optional import require
from statekit._version import __version__
from statekit.acl import for_profile as acl_for_profile
from statekit.backends import check_reachable, connect, redact_url
from statekit.decide.assess import SERVER_STATE_VERDICTS, assess
from statekit.decide.compat import check_compatibility
from statekit.decide.consistency import read_gap_ms
from statekit.decide.consistency import select as select_consistency
from statekit.decide.judgements import judgement_calls
from statekit.decide.lifecycle import recommend
from statekit.decide.observability import recommend as recommend_observability
from statekit.decide.profile import WorkloadProfile
from statekit.decide.resilience import recommend as recommend_resilience
from statekit.decide.sizing import plan_capacity
from statekit.errors import ProfileError, StatekitError

__all__ = [
    "build_review",
    "run_review",
    "write_json",
    "write_monitoring",
    "ReportFiles",
    "NOTEBOOK",
    "render_summary_markdown",
]

#: The environment variable through which run_review hands a secret-bearing URL to the kernel.
URL_ENV = "STATEKIT_REDIS_URL"

#: The report notebook, shipped inside the package (notebooks/design_review.ipynb links to it).
NOTEBOOK = Path(__file__).resolve().parent / "notebooks" / "design_review.ipynb"


def _as_profile(profile: WorkloadProfile | str | Path) -> WorkloadProfile:
    if isinstance(profile, WorkloadProfile):
        return profile
    return WorkloadProfile.from_yaml(profile)


def build_review(
    profile: WorkloadProfile | str | Path,
    redis_url: str = "fakeredis://",
    failover: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the review of `profile` as a JSON-serialisable dict.

    Sections:

    - `meta`: statekit version, time, the backend with its URL redacted;
    - `profile`: the validated input;
    - `assessment`: verdict, reasons, rubric, costs;
    - `lifecycle`: the recommended policy with its reasons, memory per session and in total
      with and without it, nodes needed, growth over turns and days (all modelled);
    - `resilience`: timeout, breaker, buffer and write policy per state class, with
      reasons, and what users see in degraded mode;
    - `consistency`: a level, Redis recipe, routing and stale-read probability per class,
      and `failover`: the lost-write figures of a failover drill when `failover` gives them
      (`statekit.drills.failover.failover_drills()`, measured), else how to measure them;
    - `migrations`: the state schema, its compatibility with the proposed next version,
      and the rollout plan;
    - `observability`: dashboards and alerts, with thresholds from the latency budget and
      the size cap;
    - `access`: one Redis user per kind of process (application, batch jobs, expiry
      watcher, audit writer) with the `ACL SETUSER` line of least privilege for each;
    - `judgements`: the choices no formula forces (what was chosen, its numbers, why, and
      the fields that rest on it); every other number is arithmetic on the profile;
    - `calibration`, when `calibration` gives one (`Calibration.as_dict()` of
      `statekit.decide.calibrate`): the profile as written against the namespace it was
      measured on, the rows, and the decisions that flipped.

    `lifecycle` and `resilience` say whether they apply: only to verdicts that keep state
    on the server. Raises `ProfileError` for a bad profile and `StoreUnavailable` when `redis_url` cannot
    be reached, before any work is done.
    """
    prof = _as_profile(profile)
    client = connect(redis_url)
    try:
        backend = check_reachable(client, redis_url)
    finally:
        client.close()
    assessment = assess(prof)
    rec = recommend(prof)
    resilience = recommend_resilience(prof, policy=rec.policy)
    keeps_server_state = assessment.verdict in SERVER_STATE_VERDICTS
    capacity = plan_capacity(prof, rec.policy)
    consistency = _consistency_section(prof, failover)
    return {
        "meta": {
            "statekit_version": __version__,
            "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "backend": backend.as_dict(),
        },
        "profile": prof.model_dump(mode="json"),
        "assessment": assessment.as_dict(),
        "lifecycle": {
            "applies": keeps_server_state,
            "policy": rec.as_dict(),
            "capacity": capacity,
        },
        "resilience": {
            "applies": keeps_server_state,
            **resilience,
        },
        "consistency": consistency,
        "migrations": _migrations_section(prof),
        "observability": recommend_observability(prof, rec.policy.max_bytes, resilience["timeout_ms"]),
        "access": {"applies": keeps_server_state, "users": acl_for_profile(prof.service)},
        "judgements": judgement_calls(
            prof, rec.policy, capacity, assessment.cost, resilience, consistency["read_gap_ms"]
        ),
        **({"calibration": calibration} if calibration else {}),
    }


def _migrations_section(prof: WorkloadProfile) -> dict[str, Any]:
    if prof.state_schema is None:
        return {"applies": False, "note": "the profile declares no state_schema"}
    current = prof.state_schema.resolve("current")
    schema = current if isinstance(current, dict) else current.model_json_schema()
    out: dict[str, Any] = {"applies": True, "current": prof.state_schema.current, "current_schema": schema}
    if prof.state_schema.next is not None:
        out["next"] = prof.state_schema.next if isinstance(prof.state_schema.next, str) else "inline JSON Schema"
        out["compatibility"] = check_compatibility(current, prof.state_schema.resolve("next")).as_dict()
    return out


def _consistency_section(prof: WorkloadProfile, failover: dict[str, Any] | None = None) -> dict[str, Any]:
    gap_ms = read_gap_ms(prof)
    choices = select_consistency(prof.state_classes, read_gap_ms=gap_ms, queue_workers=prof.state.long_running_steps)
    return {
        "read_gap_ms": gap_ms,
        "queue_workers": prof.state.long_running_steps,
        "assumed_replica_lag": "exponential, mean 1 ms (replace with consistency.measure_replica_lag on your servers)",
        "classes": [ch.as_dict() for ch in choices],
        "failover": {"measured": True, **failover}
        if failover
        else {
            "measured": False,
            "how": "statekit review PROFILE --failover-drill (needs redis-server: it starts and kills its own cluster)",
        },
    }


def write_json(review: dict[str, Any], path: str | Path) -> Path:
    """Write `review` as indented JSON to `path` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(review, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON file written by statekit (a review, or failover drill figures); StatekitError
    naming the file when it cannot be read."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatekitError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise StatekitError(f"{path} does not hold a JSON object")
    return data


def write_monitoring(review: dict[str, Any], out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write the review's alerts as a Prometheus rules file (`<name>.rules.yml`) and its
    dashboard as Grafana JSON (`<name>.dashboard.json`); return both paths."""
    import yaml

    from statekit.decide.observability import grafana_dashboard, prometheus_rules

    out = Path(out_dir)
    service = review["profile"]["service"]
    rules = out / f"{name}.rules.yml"
    rules.write_text(
        "# Prometheus alerting rules from statekit's design review; load with rule_files: in prometheus.yml\n"
        + yaml.safe_dump(prometheus_rules(review["observability"], service), sort_keys=False, width=1000),
        encoding="utf-8",
    )
    dashboard = out / f"{name}.dashboard.json"
    dashboard.write_text(json.dumps(grafana_dashboard(review["observability"], service), indent=2) + "\n")
    return rules, dashboard


def render_summary_markdown(review: dict[str, Any]) -> str:
    """The review's headline as Markdown: service, verdict and its reasons."""
    a = review["assessment"]
    p = review["profile"]
    lines = [
        f"## {p['service']}: **{a['verdict']}**",
        "",
        p.get("description", "").strip(),
        "",
        "### Why",
        *[f"- {r}" for r in a["reasons"]],
        "",
        f"_statekit {review['meta']['statekit_version']}, backend {review['meta']['backend']['kind']} "
        f"({review['meta']['backend']['url']}), {review['meta']['generated_at']}_",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class ReportFiles:
    """The files one profile's report was written to."""

    name: str
    notebook: Path
    html: Path
    json: Path
    verdict: str
    rules: Path
    dashboard: Path
    #: The schema rollout's verdict (safe, multi-phase, breaking), None without a proposed schema.
    rollout: str | None = None

    @property
    def verdicts(self) -> set[str]:
        """The review's verdicts that `statekit review --fail-on` can gate on."""
        return {self.verdict} | ({self.rollout} if self.rollout else set())


def _export_html(nb_path: Path, html_path: Path) -> None:
    nbformat = require("nbformat", what="statekit review")
    HTMLExporter = require("nbconvert", what="statekit review").HTMLExporter  # noqa: N806

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
    html_path.write_text(body, encoding="utf-8")


def _write_index(reports: list[ReportFiles], out_dir: Path) -> Path:
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(r.html.name)}">{html.escape(r.name)}</a></td>'
        f"<td>{html.escape(r.verdict)}</td>"
        f'<td><a href="{html.escape(r.json.name)}">JSON</a></td></tr>'
        for r in reports
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>statekit design reviews</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em 1em;text-align:left}</style>"
        f"</head><body><h1>statekit design reviews</h1><table><tr><th>profile</th><th>verdict</th>"
        f"<th>data</th></tr>{rows}</table></body></html>\n"
    )
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def run_review(
    profiles: Iterable[str | Path],
    out_dir: str | Path = "reports",
    redis_url: str = "fakeredis://",
    *,
    progress: bool = True,
    kernel_name: str = "python3",
    timeout_s: int = 300,
    failover_drill: bool = False,
    calibration: str | Path | None = None,
) -> list[ReportFiles]:
    """Execute the design-review notebook for each profile and write its report files.

    Every profile is validated and the backend checked before any notebook runs, so a bad
    profile or an unreachable Redis fails fast and writes nothing. With several profiles an
    `index.html` links the reports. `failover_drill` runs the failover drills first (on
    processes of their own; needs redis-server) and puts their figures in every report.
    `calibration` (the JSON of a `Calibration.as_dict()`, as `statekit calibrate --review`
    writes it) adds a calibration section: as profiled against as measured.
    """
    paths = [Path(p).resolve() for p in profiles]
    if not paths:
        raise ProfileError("no profile given: pass at least one YAML file")
    verdicts = {p: assess(WorkloadProfile.from_yaml(p)).verdict for p in paths}
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        raise ProfileError(f"two profiles share a file name, their reports would collide: {names}")
    client = connect(redis_url)
    try:
        check_reachable(client, redis_url)
    finally:
        client.close()
    _check_writable(Path(out_dir))
    drill_path = ""
    if failover_drill:
        from statekit.drills.failover import failover_drills
        from statekit.testing.servers import find_redis_server

        if not find_redis_server():
            raise StatekitError(
                "--failover-drill needs redis-server on this machine (Debian: apt-get install redis-server)"
            )
        drill = Path(out_dir) / "failover_drill.json"
        drill.write_text(json.dumps(failover_drills(), indent=2) + "\n", encoding="utf-8")
        drill_path = str(drill.resolve())

    # A URL with a secret goes to the kernel through the environment, never into the
    # executed notebook's parameters cell, which is written to disk.
    secret = redact_url(redis_url) != redis_url
    nb_url = f"env:{URL_ENV}" if secret else redis_url
    saved_env = os.environ.get(URL_ENV)
    if secret:
        os.environ[URL_ENV] = redis_url
    try:
        calibration_path = str(Path(calibration).resolve()) if calibration else ""
        return _run_notebooks(
            paths, verdicts, Path(out_dir), nb_url, progress, kernel_name, timeout_s, drill_path, calibration_path
        )
    finally:
        if secret:
            if saved_env is None:
                os.environ.pop(URL_ENV, None)
            else:
                os.environ[URL_ENV] = saved_env


def _check_writable(out_dir: Path) -> None:
    """Fail before any notebook runs when the reports cannot be written to `out_dir`."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".statekit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StatekitError(f"cannot write reports to {out_dir}: {exc.strerror or exc}") from None


def _ipc_kernel_manager() -> type:
    """A kernel manager that talks to the kernel over Unix sockets instead of loopback TCP:
    nothing else on the machine can connect to it, and ipykernel does not warn about an
    unencrypted TCP kernel on every report.

    An asyncio one, as nbclient expects: with a blocking manager nbclient's clients block its
    event loop while they wait for output, so neither the cell timeout nor the dead-kernel
    check can run, and a kernel that stops answering holds the review forever."""
    import tempfile
    import time

    from jupyter_client.asynchronous.client import AsyncKernelClient
    from jupyter_client.channels import AsyncZMQSocketChannel
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Type, default

    class SlicedChannel(AsyncZMQSocketChannel):
        """Waits for a message in polls of at most a second instead of one long poll.

        Seen in this project's test runs: a cell's reply that had arrived was only read when
        nbclient's 120 s cell timeout ended the poll (its last check found it). pyzmq's asyncio
        poll can miss the wake-up of ZMQ's edge-triggered descriptor; a poll that ends each
        second checks again, so a missed wake-up costs a second, not the timeout (or, without
        one, forever). Nothing in jupyter_client or pyzmq offers this, hence by hand."""

        async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
            from queue import Empty

            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
                if await self.socket.poll(int(left * 1000)):
                    return await self._recv()
                if deadline is not None and time.monotonic() >= deadline:
                    raise Empty

    class SlicedClient(AsyncKernelClient):
        shell_channel_class = Type(SlicedChannel)
        iopub_channel_class = Type(SlicedChannel)
        stdin_channel_class = Type(SlicedChannel)
        control_channel_class = Type(SlicedChannel)

    class IPCKernelManager(AsyncKernelManager):
        @default("client_factory")
        def _default_client_factory(self) -> type:
            return SlicedClient

        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            # the sockets' path: jupyter_client's default is `kernel-ipc` in the working
            # directory, numbered by the first free suffix, so two reviews started together in
            # one directory could pick the same sockets (a kernel then answers "Invalid
            # Signature"); a directory of its own per kernel. A Unix socket's path holds at most
            # 107 bytes ("File name too long" past them): under a long TMPDIR, /tmp instead.
            base = tempfile.gettempdir()
            if len(os.fsencode(base)) > 64 and os.access("/tmp", os.W_OK):
                base = "/tmp"
            return str(Path(tempfile.mkdtemp(prefix="statekit-kernel-", dir=base)) / "kernel")

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart:  # its sockets are removed: the directory goes too
                shutil.rmtree(Path(self.ip).parent, ignore_errors=True)

        # AsyncKernelManager binds `cleanup_resources` to its base's coroutine: without this the
        # cleanup after a dead kernel (nbclient's) would leave the directory behind
        cleanup_resources = _async_cleanup_resources

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.clients: list[Any] = []

        def client(self, **kwargs: Any) -> Any:
            # nbclient leaves the channels of a client it made on a kernel manager it was given
            # open (the kernel is the caller's): the caller closes them after each notebook
            kc = super().client(**kwargs)
            self.clients.append(kc)
            return kc

        def close_clients(self) -> None:
            while self.clients:
                self.clients.pop().stop_channels()

    return IPCKernelManager


#: Run in a kernel that served the previous profile's review, before the next one: its
#: variables go (the notebook defines each again from its parameters) and its cells count from
#: 1 again; its imports stay, which is what sharing it saves.
_RESET = "get_ipython().reset(new_session=True)"


def _shared_kernel(kernel_name: str) -> Any:
    """A started kernel for several reviews in turn (each review's own kernel would import
    matplotlib, pandas and statekit again: about 2 CPU-seconds a profile)."""
    from jupyter_core.utils import run_sync

    km = _ipc_kernel_manager()(kernel_name=kernel_name)
    run_sync(km.start_kernel)(cwd=str(NOTEBOOK.parent))
    return km


def _stop_shared_kernel(km: Any) -> None:
    from jupyter_core.utils import run_sync

    km.close_clients()
    run_sync(km.shutdown_kernel)(now=True)


def _reset_kernel(km: Any, timeout_s: int, before: Path) -> None:
    """Clear what the previous review left in the shared kernel (see `_RESET`), before the
    review of `before`. A kernel that died is named at once; one that does not answer, after
    `timeout_s`."""
    import queue
    import time

    from jupyter_client.blocking import BlockingKernelClient
    from jupyter_core.utils import run_sync

    def failed(what: str) -> StatekitError:
        return StatekitError(
            f"the review's kernel {what} before the review of {before.name}; no report was written for it"
        )

    alive = run_sync(km.is_alive)
    if not alive():
        raise failed("died")
    kc = BlockingKernelClient(**km.get_connection_info(session=True), connection_file=km.connection_file, parent=km)
    try:
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
        except RuntimeError:  # jupyter_client: the kernel died, or did not answer in 60 s
            raise failed("died" if not alive() else "did not answer") from None
        msg_id = kc.execute(_RESET, store_history=False)
        deadline = time.monotonic() + timeout_s
        while True:
            try:  # the reply, checking each second that the kernel still lives
                reply = kc.get_shell_msg(timeout=1)
            except queue.Empty:
                if not alive():
                    raise failed("died") from None
                if time.monotonic() > deadline:
                    raise failed(f"did not answer its reset within {timeout_s} s") from None
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"]["status"] != "ok":
            raise failed(f"could not be reset ({reply['content'].get('ename')}: {reply['content'].get('evalue')})")
    finally:
        kc.stop_channels()


def _run_notebooks(
    paths: list[Path],
    verdicts: dict[Path, str],
    out: Path,
    redis_url: str,
    progress: bool,
    kernel_name: str,
    timeout_s: int,
    failover_path: str = "",
    calibration_path: str = "",
) -> list[ReportFiles]:
    pm = require("papermill", what="statekit review")
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    written = []
    # Several profiles share one kernel, reset between them; one profile gets a kernel of its own.
    km = _shared_kernel(kernel_name) if len(paths) > 1 else None
    try:
        for i, path in enumerate(tqdm(paths, desc="design reviews", unit="profile", disable=not progress)):
            if km is not None and i > 0:
                _reset_kernel(km, timeout_s, path)
            written.append(
                _review_one(pm, path, verdicts[path], out, redis_url, kernel_name, timeout_s, failover_path,
                            calibration_path, km)
            )  # fmt: skip
    finally:
        if km is not None:
            _stop_shared_kernel(km)
    if len(written) > 1:
        _write_index(written, out)
    return written


def _review_one(
    pm: Any,
    path: Path,
    verdict: str,
    out: Path,
    redis_url: str,
    kernel_name: str,
    timeout_s: int,
    failover_path: str,
    calibration_path: str,
    km: Any,
) -> ReportFiles:
    """The review of one profile: the notebook executed (in `km`'s kernel when given, else in
    one of its own), then its HTML and monitoring files."""
    nb_out = out / f"{path.stem}.ipynb"
    json_out = out / f"{path.stem}.json"
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    kernel = {"km": km} if km is not None else {"kernel_manager_class": _ipc_kernel_manager()}
    try:
        pm.execute_notebook(
            str(NOTEBOOK),
            str(nb_out),
            parameters={
                "profile_path": str(path),
                "redis_url": redis_url,
                "review_json_path": str(json_out.resolve()),
                "failover_path": failover_path,
                "calibration_path": calibration_path,
            },
            kernel_name=kernel_name,
            cwd=str(NOTEBOOK.parent),
            progress_bar=False,
            execution_timeout=timeout_s,
            **kernel,
        )
    except pm.PapermillExecutionError as exc:
        raise StatekitError(
            f"the design-review notebook failed for {path.name} in cell {exc.exec_count}: "
            f"{exc.ename}: {redact_url(exc.evalue)}; the partial notebook is at {nb_out}"
        ) from None
    except (CellTimeoutError, DeadKernelError) as exc:  # the kernel went silent, or away
        what = f"a cell got no answer within {timeout_s} s" if isinstance(exc, CellTimeoutError) else "the kernel died"
        raise StatekitError(
            f"the design-review notebook did not finish for {path.name}: {what}; the partial notebook is at {nb_out}"
        ) from None
    except RuntimeError as exc:  # jupyter_client's, when the kernel exits before it answers at all
        if "Kernel died before replying" not in str(exc):
            raise
        raise StatekitError(
            f"the design-review notebook did not run for {path.name}: its kernel exited before it answered "
            f"(is the kernel {kernel_name!r} installed and working? `jupyter kernelspec list`)"
        ) from None
    finally:
        if km is not None:
            km.close_clients()
    html_out = out / f"{path.stem}.html"
    _export_html(nb_out, html_out)
    review = json.loads(json_out.read_text(encoding="utf-8"))
    rules, dashboard = write_monitoring(review, out, path.stem)
    rollout = review["migrations"].get("compatibility", {}).get("verdict")
    return ReportFiles(path.stem, nb_out, html_out, json_out, verdict, rules, dashboard, rollout)
