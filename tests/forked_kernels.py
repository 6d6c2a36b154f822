"""Kernels for the test run's notebook executions, forked from a process that has imported
what every notebook imports.

A notebook's run here costs about 1.8 CPU-seconds before its first cell: the kernel's Python
starts and imports ipykernel, statekit, matplotlib and pandas. The suite executes some forty
notebooks per run. A forkserver (the standard library's `multiprocessing` one) imports them
once per worker; each kernel is a fresh process forked from it, so every notebook still runs in
a kernel of its own, whose modules are as freshly imported as a cold kernel's: nothing of one
notebook reaches another. The forked process is made to look like a kernel of its own where a
notebook could tell: its `sys.path` is a new interpreter's, multiprocessing sees a main process
(default start method fork), its `atexit` functions run when it ends, and it ends with the
process that manages it. What still differs: the imports happened before the fork, and the plot
backend the environment names when the forkserver starts (the inline one, unless MPLBACKEND
names another) holds for the worker's life.

jupyter_client manages a kernel through a provisioner that holds a `subprocess.Popen`;
`ForkedProcess` gives the forked process that face (poll, wait, signals). jupyter_client has no
provisioner that forks (its own always starts a new interpreter), hence by hand.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import uuid
from typing import Any

#: What the forkserver imports once: what every kernel imports before its first cell, and what
#: most notebooks import in their first.
PRELOAD = [
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "IPython",
    "matplotlib",
    "matplotlib.pyplot",
    "pandas",
    "ipywidgets",
    "statekit",
    "statekit.workbook.plots",
    "statekit.workbook.widgets",
    # what a kernel still imported as it started, after the modules above: its debugger
    # (ipykernel's kernel imports debugpy when made), 0.15 CPU-seconds a notebook
    "ipykernel.debugger",
    "debugpy.server.api",
]
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def _fork(target: Any, args: tuple[Any, ...]) -> Any:
    """A started process forked from the forkserver. multiprocessing starts the forkserver at the first (and again
    should it have died), with PRELOAD imported and this process's environment: for that moment
    the environment names the inline plot backend, as ipykernel names it in a kernel of its own
    before a notebook imports matplotlib (which reads MPLBACKEND when imported). A backend the
    environment names is kept, as ipykernel keeps it; this process's own matplotlib is untouched."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    process = ctx.Process(target=target, args=args, daemon=False)
    unset = [name for name in _FORKSERVER_ENV if name not in os.environ]
    os.environ.update({name: _FORKSERVER_ENV[name] for name in unset})
    try:
        process.start()
    finally:
        for name in unset:
            os.environ.pop(name, None)
    return process


#: The environment the forkserver starts with, where this process's does not name them: the
#: inline plot backend (see `_fork`), and debugpy's check for frozen modules off (it would print
#: a warning into the test run's output as the forkserver imports it; the kernels themselves
#: get the environment jupyter_client gives them).
_FORKSERVER_ENV = {"MPLBACKEND": INLINE_BACKEND, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


def _exit_with(manager_pid: int) -> None:
    """End this kernel when the process that manages it ends, killed or not. A cold kernel
    does so when its parent goes (ipykernel polls its parent's pid); a forked one's parent is
    the forkserver, which lives on while any process it forked lives (each holds its liveness
    pipe), so a kernel left by a killed worker would outlive it, and keep the forkserver alive.
    A pidfd becomes readable when the process exits: waited on, not polled."""
    import select
    import threading

    try:
        fd = os.pidfd_open(manager_pid)
    except ProcessLookupError:
        os._exit(1)

    def watch() -> None:
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="statekit-test-manager-watch", daemon=True).start()


def _as_a_main_process(path: list[str]) -> None:
    """What multiprocessing and the import path would be in a kernel of its own: a forked child
    has its manager's `sys.path` (the test run's, with tests/ on it) and multiprocessing set up
    as a forkserver's child (its default start method forkserver, under which a Pool of a
    function the notebook defines cannot find it in the children)."""
    import multiprocessing.process

    sys.path[:] = path
    sys.modules.pop(__name__, None)  # a notebook's `import forked_kernels` fails, as in a cold kernel
    multiprocessing.set_start_method(None, force=True)
    me = multiprocessing.current_process()  # as multiprocessing describes a main process
    me._identity, me._name, me._parent_pid = (), "MainProcess", None  # type: ignore[attr-defined]
    multiprocessing.process._parent_process = None  # type: ignore[attr-defined]


def _kernel_main(argv: list[str], env: dict[str, str], cwd: str | None, manager_pid: int, path: list[str]) -> None:
    """The forked kernel: the environment and working directory jupyter_client gave it, then
    ipykernel's own entry point with its arguments (`-f connection-file`). The functions
    registered with `atexit` run when it ends, as they do when a kernel of its own exits (a
    forked process ends in `os._exit`, which skips them)."""
    import atexit

    _exit_with(manager_pid)
    _as_a_main_process(path)
    os.environ.clear()
    os.environ.update(env)
    if cwd:
        os.chdir(cwd)
    # the kernel's parent is the forkserver: ipykernel exits when its parent goes (it polls it),
    # and it reads JPY_PARENT_PID (the manager's process) when imported, before the fork
    argv = [*argv, f"--IPKernelApp.parent_handle={os.getppid()}"]
    sys.argv = ["ipykernel_launcher", *argv]
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the forkserver ignores ^C; a kernel must not
    from ipykernel import kernelapp

    try:
        kernelapp.launch_new_instance(argv=argv)
    finally:
        atexit._run_exitfuncs()


def _cold_sys_path(env: dict[str, str]) -> list[str]:
    """`sys.path` of a new interpreter started with `env` (its PYTHONPATH counts), without the
    working directory ipykernel's launcher removes before the kernel starts (IPython puts it
    back first)."""
    key = env.get("PYTHONPATH", "")
    if key not in _COLD_PATHS:
        import json
        import subprocess

        out = subprocess.run(
            [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        _COLD_PATHS[key] = [p for p in json.loads(out) if p != ""]
    return _COLD_PATHS[key]


_COLD_PATHS: dict[str, list[str]] = {}


class ForkedProcess:
    """A forked kernel process as jupyter_client's provisioner uses a `subprocess.Popen`."""

    stdin = stdout = stderr = None

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: str | None) -> None:
        # cmd: [python, "-m", "ipykernel_launcher", "-f", connection_file, ...]
        if "ipykernel_launcher" not in cmd:
            raise ValueError(f"not an ipykernel command: {cmd}")
        argv = cmd[cmd.index("ipykernel_launcher") + 1 :]
        self._process = _fork(_kernel_main, (argv, env, cwd, os.getpid(), _cold_sys_path(env)))
        self.pid = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        self._process.join(timeout)
        return self.poll()

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def forked_provisioner_class() -> type:
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    class ForkedProvisioner(LocalProvisioner):
        """LocalProvisioner with the kernel forked (see the module's text). Signals go to the
        kernel's process alone: it shares its process group with the forkserver."""

        async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
            self.process = ForkedProcess(cmd, kwargs.get("env") or dict(os.environ), kwargs.get("cwd"))
            self.pid, self.pgid = self.process.pid, None
            self.cwd = kwargs.get("cwd") or os.getcwd()
            return self.connection_info

    return ForkedProvisioner


def forked_kernel_manager() -> type:
    """statekit's kernel manager (Unix sockets, polls of a second: `_ipc_kernel_manager`) with
    its kernels forked from the forkserver."""
    from statekit.workbook.review import _ipc_kernel_manager

    provisioner = forked_provisioner_class()

    class ForkedKernelManager(_ipc_kernel_manager()):  # type: ignore[misc]
        async def _async_pre_start_kernel(self, **kw: Any) -> Any:
            if self.provisioner is None:
                self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
                self.provisioner = provisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
            return await super()._async_pre_start_kernel(**kw)

    return ForkedKernelManager
