"""A pre-warmed launcher for runtimes: start replicas by forking, not by booting Python.

Most of a runtime's start-up is not the model: it is the interpreter importing torch (about a
second), FastAPI, uvicorn and friends. A *zygote* pays that once. It imports everything a
runtime needs, freezes the heap, and waits on a Unix socket; each launch request forks it.
The child (copy-on-write, already warm) only loads its bundle, binds its port and warms up,
so a small model answers its first request a few hundred milliseconds after the request to
launch it. The hub service's local backend launches replicas this way.

Forking is only safe while the zygote is single-threaded (no OpenMP pool, no event loop):
it never runs a model or an event loop itself, and it caps OpenBLAS at one thread before
numpy is imported (OpenBLAS starts its pool at import), so numpy's own BLAS calls in the
launched runtimes run on one thread; torch's thread pool is unaffected. Children start a
new session, reset signal handlers, write to their own log file and never return into the
zygote's loop; they are not the zygote's to supervise (their caller watches them by pid and
health checks), so the zygote lets the kernel reap them.

Protocol: one JSON line per connection, ``{"source", "settings", "env", "log_file",
"sys_path", "warm_key", "preload", "cgroups", "sandbox"}``, or ``{"exec": [command...],
"env", "log_file", "cgroups", "sandbox"}`` to start a command instead
(:func:`spawn_command`); the reply is ``{"pid": N}`` or ``{"error": "..."}``. ``cgroups``
are ``cgroup.procs`` files the child joins before anything else (its resource limits).
``sys_path`` lists folders the child puts first on its path before the bundle is loaded: a
bundle's overlay of extra packages (:mod:`model_runtime.envs`), which keeps the zygote's
warm torch.

**Warm launchers.** An overlay's own packages still cost their import in every replica
(scikit-learn and SciPy: about a second here). With ``warm_key`` (the environment's key) and
``preload`` (its top-level modules), the first launch forks a replica as usual and, beside
it, a *warm launcher*: a child zygote with the overlay on its path and those modules
imported, serving launch requests on a socket of its own. Later launches for that key are
forwarded to it, so their replicas start with the environment's imports done. At most
:data:`MAX_WARM` live at once (the least recently used is stopped); one that cannot start
(a module fails to import, or leaves threads behind) is never tried again, and launches for
its key fork from the zygote itself.

**Secrets.** Every runtime forked from the zygote starts with a copy of the zygote's memory,
and what the zygote once read (freed, not erased) is in that copy. So the zygote never reads
a secret: a request names a ``token_file`` instead of carrying the runtime's API token, and
the child reads it after the fork, before any bundle code runs. A sandboxed runtime thus
cannot find other deployments' tokens in its own memory.

**Sandboxes.** A request with ``sandbox`` (a :class:`~model_runtime.sandbox.Profile`) forks
a setup process that joins the cgroups, opens the log, makes the sandbox and forks the
runtime as PID 1 of its own PID namespace, which drops to the profile's account before the
bundle loads; the reply is that process's pid. The zygote is a child subreaper, so runtimes
whose setup process has exited are still its children and reaped. Sandboxed launches never
use warm launchers: a warm launcher imports an overlay's packages, which are code the
deploying user chose, and that must not run as root outside a sandbox.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from ..errors import HubserveError
from ..sandbox import Profile, SandboxError, fork_sandboxed
from ..sandbox._linux import become_subreaper
from ._server import LAUNCH_ENV

log = logging.getLogger("hubserve.zygote")

#: Imported before forking: everything a runtime imports that does not depend on the bundle.
PRELOAD = (
    "numpy",
    "torch",
    "safetensors.torch",
    "pandas",
    "PIL.Image",
    "fastapi",
    "uvicorn",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.on",
    "orjson",
    "prometheus_client",
    "model_runtime.runtime",
)
_MAX_REQUEST = 1024 * 1024
#: Warm launchers alive at once (each holds its environment's modules in memory).
MAX_WARM = 4


class ZygoteError(HubserveError):
    """The zygote could not be reached or refused to launch a runtime."""


def preload() -> list[str]:
    """Import :data:`PRELOAD` (skipping what is not installed); return what was imported."""
    loaded = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        loaded.append(name)
    return loaded


def _os_threads() -> int:
    try:
        return sum(1 for _ in Path("/proc/self/task").iterdir())
    except OSError:
        return threading.active_count()


def run_zygote(socket_path: Path, *, parent: int | None = None) -> None:
    """Serve launch requests on ``socket_path`` until SIGTERM/SIGINT.

    With ``parent`` (the supervisor's pid), also stop once the zygote is no longer that
    process's child (checked every second), so a supervisor that is killed leaves no
    launcher behind, even one killed while the zygote was still importing.
    """
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # in case numpy is not imported yet
    loaded = preload()
    _freeze()
    with contextlib.suppress(OSError):
        become_subreaper()  # sandboxed runtimes outlive their setup process
    warm = _WarmLaunchers(socket_path.parent / f"{socket_path.stem}-warm")
    try:
        _serve(socket_path, parent, warm, f"{len(loaded)} modules preloaded")
    finally:
        warm.stop_all()


def _freeze() -> None:
    gc.collect()
    gc.freeze()
    if _os_threads() > 1:
        raise ZygoteError(
            "the zygote has background threads after importing its modules, so forking it is"
            " unsafe; start it with OPENBLAS_NUM_THREADS=1 (hubserve zygote does)"
        )


def _serve(socket_path: Path, parent: int | None, warm: _WarmLaunchers | None, what: str) -> None:
    """Accept launch requests until stopped, or until ``parent`` (if given) is gone."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is 0600 from birth: only our user may launch
    try:
        server.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    server.listen(64)
    if parent is not None:
        server.settimeout(1.0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps children for us
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"hubserve zygote ready on {socket_path} ({what})", flush=True)
    try:
        while not stopping and (parent is None or os.getppid() == parent):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                break  # closed by stop()
            conn.settimeout(None)
            with conn:
                _serve_one(conn, server, warm)
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


def _serve_one(conn: socket.socket, server: socket.socket, warm: _WarmLaunchers | None) -> None:
    try:
        request = _read_request(conn)
    except (ValueError, OSError) as exc:
        _reply(conn, {"error": str(exc)})
        return
    if request.get("sandbox") is not None:  # never from a warm launcher: see the module doc
        _reply(conn, _launch_sandboxed(request, (server, conn)))
        return
    if request.get("exec") is not None:
        _reply(conn, _launch_command(request, (server, conn)))
        return
    key = request.get("warm_key")
    if warm is not None and isinstance(key, str) and key:
        forwarded = warm.launch(key, request)
        if forwarded is not None:
            _reply(conn, {"pid": forwarded})
            return
    try:
        pid = os.fork()
    except OSError as exc:
        _reply(conn, {"error": str(exc)})
        return
    if pid == 0:  # the child: never returns
        server.close()
        conn.close()
        try:
            _attach(request)
            os.setsid()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        _become_runtime(request)
    _reply(conn, {"pid": pid})
    if warm is not None and isinstance(key, str) and key:
        warm.start(key, request, (server, conn))


def _launch_sandboxed(
    request: dict[str, Any], inherited: tuple[socket.socket, ...]
) -> dict[str, Any]:
    """Fork a runtime into the sandbox the request's profile describes; the reply."""
    try:
        profile = Profile.from_json(request["sandbox"])
    except (KeyError, ValueError, TypeError) as exc:
        return {"error": f"invalid sandbox profile: {exc}"}

    def attach() -> None:
        for sock in inherited:
            sock.close()
        _attach(request)

    become = _run_command if request.get("exec") is not None else _become_runtime
    try:
        pid = fork_sandboxed(profile, lambda: become(request), before=attach)
    except (SandboxError, OSError) as exc:
        return {"error": str(exc)}
    return {"pid": pid}


def _launch_command(
    request: dict[str, Any], inherited: tuple[socket.socket, ...]
) -> dict[str, Any]:
    """Fork a child that runs the request's command (``exec``) in its own session."""
    try:
        pid = os.fork()
    except OSError as exc:
        return {"error": str(exc)}
    if pid == 0:
        for sock in inherited:
            sock.close()
        try:
            _attach(request)
            os.setsid()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        _run_command(request)
    return {"pid": pid}


def _run_command(request: dict[str, Any]) -> NoReturn:
    """Become the request's command, with exactly the request's environment (and, in a
    sandbox, the account's variables)."""
    argv = [str(a) for a in request["exec"]]
    env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
    for name in ("HOME", "TMPDIR", "USER", "LOGNAME"):  # set by the sandbox, if any
        if name in os.environ and request.get("sandbox") is not None:
            env[name] = os.environ[name]
    try:
        os.execve(argv[0], argv, env)  # noqa: S606 - the caller's command, not a shell
    except BaseException as exc:
        print(f"Error: cannot start {argv[0]}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)


@dataclass
class _Warm:
    pid: int
    socket_path: Path
    last_used: float = field(default_factory=time.monotonic)


class _WarmLaunchers:
    """The zygote's warm launchers by environment key (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.live: dict[str, _Warm] = {}
        self.failed: set[str] = set()

    def launch(self, key: str, request: dict[str, Any]) -> int | None:
        """A replica forked by ``key``'s warm launcher, or None (none ready, or it failed)."""
        warm = self.live.get(key)
        if warm is None:
            return None
        if not _alive(warm.pid):
            del self.live[key]
            self.failed.add(key)  # it died on its own: its imports do not fork safely
            return None
        if not warm.socket_path.exists():
            return None  # still importing: this launch forks from the zygote
        forwarded = {k: v for k, v in request.items() if k not in ("warm_key", "preload")}
        try:
            reply = _exchange(warm.socket_path, forwarded, timeout=10.0)
        except ZygoteError:
            self._stop(key)
            self.failed.add(key)
            return None
        if "pid" not in reply:
            return None
        warm.last_used = time.monotonic()
        return int(reply["pid"])

    def start(
        self, key: str, request: dict[str, Any], inherited: tuple[socket.socket, ...]
    ) -> None:
        """Fork ``key``'s warm launcher (unless it runs, or failed before); ``inherited``:
        the zygote's sockets, which the launcher closes."""
        if key in self.live or key in self.failed:
            return
        while len(self.live) >= MAX_WARM:
            self._stop(min(self.live, key=lambda k: self.live[k].last_used))
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / f"{key[:24]}.sock"
        paths = [str(p) for p in request.get("sys_path") or []]
        modules = [str(m) for m in request.get("preload") or []]
        try:
            pid = os.fork()
        except OSError:
            self.failed.add(key)
            return
        if pid == 0:
            for sock in inherited:
                sock.close()
            _become_warm_launcher(path, paths, modules)
        self.live[key] = _Warm(pid, path)

    def _stop(self, key: str) -> None:
        warm = self.live.pop(key)
        with contextlib.suppress(ProcessLookupError):
            os.kill(warm.pid, signal.SIGTERM)

    def stop_all(self) -> None:
        for key in list(self.live):
            self._stop(key)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _become_warm_launcher(socket_path: Path, paths: list[str], modules: list[str]) -> None:
    """The child zygote of one environment: its path, its imports, its own socket."""
    parent = os.getppid()  # the zygote, before the imports (which take a while)
    code = 0
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        _add_to_path(paths)
        for name in modules:
            with contextlib.suppress(Exception):  # a module that fails now fails in the replica
                importlib.import_module(name)
        _freeze()
        _serve(socket_path, parent, None, f"warm for {len(modules)} modules")
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _add_to_path(paths: list[str]) -> None:
    new = [p for p in paths if p not in sys.path]
    if new:
        sys.path[0:0] = new
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [*new, *filter(None, [os.environ.get("PYTHONPATH")])]
        )


def _read_line(conn: socket.socket) -> bytes:
    """One newline-terminated message (or whatever came before the peer closed)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise ValueError("launch request too large")
    return data


def _read_request(conn: socket.socket) -> dict[str, Any]:
    request = json.loads(_read_line(conn))
    command = request.get("exec") if isinstance(request, dict) else None
    if command is not None and (
        not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command)
    ):
        raise ValueError('"exec" is a command: a non-empty list of strings')
    if not isinstance(request, dict) or not (
        isinstance(request.get("source"), str) or command is not None
    ):
        raise ValueError('a launch request is {"source": ..., "settings": {...}, ...}')
    if not isinstance(request.get("log_file"), str):
        raise ValueError("a launch request needs a log_file")
    return request


def _reply(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def _attach(request: dict[str, Any]) -> None:
    """In a new child, with the machine's view: join the request's cgroups (its limits,
    before any of its code runs), read its API token, and send its output to its log file."""
    for procs in request.get("cgroups") or []:
        Path(procs).write_text("0")
    if request.get("token_file"):
        token = Path(request["token_file"]).read_text(encoding="utf-8").strip()
        _add_setting(request, "api_token", token)
    if request.get("bind"):  # the port, before any code of the bundle could take it
        host, port = request["bind"]
        # No SO_REUSEADDR, and not listening yet: no other socket can bind it meanwhile,
        # and nothing connects before the runtime listens, once its model is loaded.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((str(host), int(port)))
        sock.set_inheritable(True)
        _add_setting(request, "socket_fd", sock.detach())
    log_fd = os.open(request["log_file"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)


def _add_setting(request: dict[str, Any], key: str, value: object) -> None:
    """Add a runtime setting where the runtime reads them: the launch request of a command
    (its :data:`LAUNCH_ENV`), or the settings of a runtime forked from here."""
    env = request.get("env") or {}
    if request.get("exec") is not None and LAUNCH_ENV in env:
        launch = json.loads(env[LAUNCH_ENV])
        launch.setdefault("settings", {})[key] = value
        env[LAUNCH_ENV] = json.dumps(launch)
    else:
        request.setdefault("settings", {})[key] = value


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # An explicit handler, not SIG_DFL: a sandboxed runtime is PID 1 of its namespace, and
    # the kernel drops signals PID 1 has no handler for. uvicorn installs its own later.
    raise SystemExit(128 + signum)


def _become_runtime(request: dict[str, Any]) -> NoReturn:
    code = 1
    try:
        for signum in (signal.SIGCHLD, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        os.environ.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
        _add_to_path([str(p) for p in request.get("sys_path") or []])
        from . import RuntimeSettings, serve

        settings = RuntimeSettings(**(request.get("settings") or {}))
        serve(request["source"], settings)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except HubserveError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def spawn(
    socket_path: Path,
    source: str,
    *,
    log_file: Path,
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    sys_path: list[str] | None = None,
    warm_key: str | None = None,
    preload: list[str] | None = None,
    cgroups: list[str] | None = None,
    sandbox: Profile | None = None,
    token_file: Path | None = None,
    bind: tuple[str, int] | None = None,
    timeout: float = 10.0,
) -> int:
    """Ask the zygote at ``socket_path`` to launch a runtime; return the runtime's pid.

    ``warm_key`` and ``preload`` (an overlay's key and modules) let the zygote keep a warm
    launcher for that environment (see the module docstring). ``cgroups``: the
    ``cgroup.procs`` files the runtime joins before it loads anything (its limits).
    ``sandbox``: the runtime runs in that sandbox (:mod:`model_runtime.sandbox`), entered
    after the fork, and the pid is the sandboxed process's. ``token_file``: a file the child
    reads its API token from (the zygote itself never reads it: see the module docstring).
    ``bind``: the child binds that address before it loads anything, and the runtime
    listens on that socket (see ``RuntimeSettings.socket_fd``).
    """
    message: dict[str, Any] = {
        "source": source,
        "settings": settings or {},
        "env": env or {},
        "log_file": str(log_file),
        "sys_path": sys_path or [],
        "cgroups": cgroups or [],
        **_options(token_file, bind, sandbox),
    }
    if sandbox is None and warm_key:
        message["warm_key"] = warm_key
        message["preload"] = preload or []
    reply = _exchange(socket_path, message, timeout)
    if "error" in reply:
        raise ZygoteError(f"the zygote refused to launch {source}: {reply['error']}")
    return int(reply["pid"])


def spawn_command(
    socket_path: Path,
    command: list[str],
    *,
    env: dict[str, str],
    log_file: Path,
    cgroups: list[str] | None = None,
    sandbox: Profile | None = None,
    token_file: Path | None = None,
    bind: tuple[str, int] | None = None,
    timeout: float = 10.0,
) -> int:
    """Ask the zygote to start ``command`` (with exactly ``env``) as it starts runtimes: in
    its own session, its output in ``log_file``, in ``cgroups`` and ``sandbox`` if given;
    its pid. For runtimes under another interpreter (a bundle's separate environment), which
    gain nothing from the zygote's imports but, sandboxed, its way into a sandbox: no
    process stays behind to wait for them."""
    message: dict[str, Any] = {
        "exec": command,
        "env": env,
        "log_file": str(log_file),
        "cgroups": cgroups or [],
        **_options(token_file, bind, sandbox),
    }
    reply = _exchange(socket_path, message, timeout)
    if "error" in reply:
        raise ZygoteError(f"the zygote refused to start {command[0]}: {reply['error']}")
    return int(reply["pid"])


def _options(
    token_file: Path | None, bind: tuple[str, int] | None, sandbox: Profile | None
) -> dict[str, Any]:
    """The optional parts of a launch request (see :func:`spawn`)."""
    options: dict[str, Any] = {}
    if token_file is not None:
        options["token_file"] = str(token_file)
    if bind is not None:
        options["bind"] = list(bind)
    if sandbox is not None:
        options["sandbox"] = sandbox.to_json()
    return options


def _exchange(socket_path: Path, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request and its reply on a zygote's socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(socket_path))
            conn.sendall(json.dumps(message, default=str).encode() + b"\n")
            data = _read_line(conn)
    except OSError as exc:
        raise ZygoteError(f"cannot reach the zygote at {socket_path}: {exc}") from None
    try:
        reply = json.loads(data)
    except json.JSONDecodeError:
        raise ZygoteError("the zygote closed the connection without an answer") from None
    if not isinstance(reply, dict):
        raise ZygoteError("the zygote answered something that is not a reply")
    return reply
