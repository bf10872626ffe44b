"""``make up``: start hubserve's whole stack on this machine, with embedded defaults.

What runs, all on 127.0.0.1, all state under ``.hubserve/`` (``--state``):

* an S3 server (SeaweedFS via :class:`~model_runtime.testing.s3server.S3Server`, standing in
  for MinIO; data in ``<state>/s3``), with the example model pushed to bucket ``models``;
* JupyterHub 6 with configurable-http-proxy (npm, ``.hubserve/node``) on the public port, the
  dev ``shared-password`` authenticator, and JupyterLab single-user servers as local
  processes (homes in ``<state>/users/<name>``): see ``dev/jupyterhub_config.py``;
* the hubserve service, managed by the hub at ``/services/hubserve/`` (data in
  ``<state>/service``), with the S3 server as its store and the ``local`` deploy backend;
* the astro example preloaded (:func:`_preload`): ``examples/astro/service.py:service``
  pushed through hubserve's API and deployed as ``<admin>/astro`` (1 replica), so that a
  newcomer finds a working deployment in the Lab panel; ``examples/astro/astro.ipynb`` is
  copied into the admin's home (unless there is one already). Idempotent: a run whose
  example is already in the store pushes nothing and leaves the deployment as it is; a
  changed example (code or weights) is pushed as a new version and the deployment rolls to
  it. ``--no-preload`` skips all of it.

It prints the hub URL, how to log in and the first steps once the hub API and hubserve's
``healthz`` answer through the proxy and the astro deployment is ready (the line
``hubserve is up at <url> ...``), then stays in the foreground. A failed preload is reported
in that summary; the rest of the stack runs regardless. Ctrl-C (SIGINT) or SIGTERM stops
everything: the hub (which stops the single-user servers, the service and the proxy), then
the S3 server; as a last resort any process still marked as part of this stack
(``HUBSERVE_UP_STATE=<state>`` in its environment, or Python, node or weed working in the
state directory) is killed. The same sweep at start-up stops what a killed earlier run
(``kill -9``) left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from jupyter_extension.client import Client
    from model_runtime import BuiltBundle

ROOT = Path(__file__).resolve().parent.parent
HUB_CONFIG = ROOT / "dev" / "jupyterhub_config.py"
DEFAULT_CHP = ROOT / ".hubserve/node/node_modules/.bin/configurable-http-proxy"
EXAMPLES = ["examples/iris/iris.py:service"]
# The preloaded example: built from this source, deployed under this name for the admin.
PRELOAD_SOURCE = "examples/astro/service.py:service"
PRELOAD_DEPLOYMENT = "astro"
PRELOAD_NOTEBOOK = ROOT / "examples/astro/astro.ipynb"
PRELOAD_TIMEOUT = 180.0
# The make-up service's token (see dev/jupyterhub_config.py), in <state>/hub.
UP_TOKEN_FILE = "make-up.token"  # noqa: S105 - a file name
MARKER = "HUBSERVE_UP_STATE"  # in the environment of every process of the stack
HOST = "127.0.0.1"
HUB_STOP_TIMEOUT = 30.0
LEFTOVER_GRACE = 5.0


#: The OS user the service's sandboxes run models as (its default); `make up` creates it.
MODELS_USER = "hubserve-models"


class UpError(Exception):
    """A problem the user can fix; printed without a traceback."""


# -- the models' sandbox -------------------------------------------------------------------


def sandboxed() -> bool:
    """Whether the service sandboxes models here: making sandboxes takes root."""
    return os.geteuid() == 0


def share_home(home: Path) -> None:
    """Make ``home`` a folder sandboxed models may write batch-job results into, as they
    run as ``MODELS_USER``: its group becomes that user's, inherited by new folders
    (setgid), and may write. Single-user servers run with a umask of 002 (see
    ``dev/jupyterhub_config.py``), so the folders a notebook makes there are shared too."""
    home.mkdir(parents=True, exist_ok=True)
    if sandboxed():
        os.chown(home, -1, grp.getgrnam(MODELS_USER).gr_gid)
        home.chmod(0o2775)


def _check_models_user() -> None:
    if not sandboxed():
        print(
            "make up: not running as root, so models run unsandboxed, as your own user"
            " (HUBSERVE_LOCAL_ISOLATION=none): for development only",
            flush=True,
        )
        return
    try:
        grp.getgrnam(MODELS_USER)
    except KeyError:
        raise UpError(
            f"there is no OS user {MODELS_USER} to run models as: `make up` creates it"
            f" (or: useradd --system --user-group --no-create-home {MODELS_USER})"
        ) from None


# -- ports ---------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` (SO_REUSEADDR, as servers bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _check_port(port: int, what: str, flag: str, env: str) -> None:
    if not 0 < port < 65536:
        raise UpError(f"{what} port {port} is not a valid port")
    if not _port_free(port):
        raise UpError(
            f"port {port} ({what}) is already in use on {HOST}. Stop what uses it "
            f"(`ss -ltnp 'sport = :{port}'` shows it) or pick another port: "
            f"`{env}=<port> make up`, or `dev/up.py {flag} <port>`."
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- the state directory: one stack at a time, and its leftovers ---------------------------


def _lock(state: Path) -> IO[str]:
    """Hold ``<state>/up.lock`` for the life of this process (released on any exit)."""
    lock = (state / "up.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise UpError(
            f"another `make up` (pid {holder}) is already running with state {state}; "
            "stop it first (Ctrl-C in its terminal), or use another --state"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rpartition(")")[2].split()[1])
    return pids


def _stack_programs() -> set[str]:
    """Executables that processes of the stack run: this Python, node, weed."""
    candidates = [sys.executable, str(Path(sys.executable).with_name("weed"))]
    candidates += [shutil.which(name) or "" for name in ("node", "weed")]
    return {os.path.realpath(c) for c in candidates if c}


def _under(path: str, state: Path) -> bool:
    return path == str(state) or path.startswith(f"{state}/")


def _leftovers(state: Path) -> dict[int, str]:
    """Processes of a stack on ``state`` (pid -> command line), this process and its parents
    excepted: those with the marker in their environment (or the local backend's, for a
    folder in ``state``), and this stack's programs (Python, node, weed) working in the state
    directory. Linux only (``/proc``); elsewhere, nothing
    is found.

    Command lines are not a criterion: the proxy installed in ``.hubserve/node`` is shared
    with ``make test-hub``, whose hubs' proxies mention that path too. Shells and editors
    whose working directory is in the state directory are not this stack's programs.
    """
    marker = f"\0{MARKER}={state}\0".encode()
    # The service's zygote and replicas: their environment is scrubbed of ours, and sandboxed
    # replicas work in their own /tmp; the local backend marks them with its folder instead
    # (hub_service.backends.local.OWNER_ENV).
    replicas = f"\0HUBSERVE_LOCAL_BACKEND={state}/".encode()
    skip = _ancestors()
    programs = _stack_programs()
    found: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid in skip:
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            ]
            if not argv[0]:  # a zombie or a kernel thread
                continue
            environ = b"\0" + (entry / "environ").read_bytes()
            ours = marker in environ or replicas in environ
            if not ours and os.path.realpath(entry / "exe") in programs:
                ours = _under(str((entry / "cwd").readlink()), state)
        except OSError:  # gone, or not ours to read
            continue
        if ours:
            found[pid] = " ".join(argv).strip()
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _kill_leftovers(state: Path) -> dict[int, str]:
    """SIGTERM the stack's leftover processes, SIGKILL those still there after a grace."""
    found = _leftovers(state)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_GRACE
    while any(_alive(pid) for pid in found) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in found:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return found


# -- the pieces ----------------------------------------------------------------------------


def _secret_file(path: Path, value: str) -> None:
    """Write ``value`` to a new file readable by this user only (fails if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(value)


def _up_token(hub_dir: Path) -> str:
    """The ``make-up`` service's hub token, generated on the first run and kept (mode 0600).

    The hub registers it at start-up from ``dev/jupyterhub_config.py``; its only permission
    is to issue tokens for the admin user, which :func:`_preload` needs.
    """
    path = hub_dir / UP_TOKEN_FILE
    if not path.exists():
        _secret_file(path, secrets.token_hex(32))
    return path.read_text().strip()


def _passwords(hub_dir: Path) -> dict[str, str]:
    """The dev authenticator's passwords, generated on the first run and kept (mode 0600)."""
    path = hub_dir / "passwords.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    # The shared-password authenticator wants >= 8 characters for users, >= 32 for admins.
    passwords = {"admin": secrets.token_urlsafe(24), "user": secrets.token_urlsafe(9)}
    _secret_file(path, json.dumps(passwords))
    return passwords


def _push_examples(
    endpoint: str, keys: tuple[str, str], bucket: str, state: Path, owner: str
) -> list[str]:
    """Push each example unless its latest version already has the same content."""
    from model_runtime import S3Store, build_bundle  # imports torch: off the startup path

    store = S3Store(endpoint, bucket, access_key=keys[0], secret_key=keys[1], secure=False)
    refs = []
    for source in EXAMPLES:
        built = build_bundle(str(ROOT / source), output_dir=state / "builds")
        try:
            current = store.stat(f"{owner}/{built.manifest.name}")
            unchanged = current.manifest.files == built.manifest.files
        except LookupError:
            unchanged = False
        record = current if unchanged else store.push(built.archive, owner=owner)
        built.archive.unlink()
        refs.append(f"{record.ref}" + (" (unchanged)" if unchanged else " (pushed)"))
    return refs


def _build_preload(state: Path, examples: Task) -> BuiltBundle:
    """Package the preloaded example (after the examples' push: one torch import at a time)."""
    from model_runtime import build_bundle

    examples.join()
    return build_bundle(str(ROOT / PRELOAD_SOURCE), output_dir=state / "builds")


class Task(threading.Thread):
    """``function(*args)`` in a daemon thread, while the hub starts (it imports torch).

    Used for :func:`_push_examples` and :func:`_build_preload`; ``what`` names the work in
    the error :meth:`result` raises when it failed.
    """

    def __init__(self, what: str, function: Any, *args: object) -> None:
        super().__init__(name=what, daemon=True)
        self.what = what
        self._function = function
        self._args = args
        self._result: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self._function(*self._args)
        except BaseException as error:
            self._error = error

    def result(self) -> Any:
        """What the function returned; raises what it raised, as an :class:`UpError`."""
        self.join()
        if self._error is not None:
            raise UpError(f"{self.what} failed: {self._error!r}") from self._error
        return self._result


# -- the preloaded example -------------------------------------------------------------------


def _content_hash(version: str) -> str:
    """The content part of a version, ``<UTC time>-<hash of the files>``: the same files give
    the same hash, whenever they are packaged."""
    return version.rpartition("-")[2]


def _admin_token(hub: httpx.Client, admin: str) -> tuple[str, str]:
    """A new token of ``admin`` that may only use hubserve, valid for a quarter of an hour.

    hubserve resolves every caller with ``GET /hub/api/user`` and accepts user tokens only, so
    the ``make-up`` service's own token would be refused; it may issue tokens for the admin,
    though, and the admin's token needs nothing but ``access:services!service=hubserve``.
    """
    response = hub.post(
        f"/users/{admin}/tokens",
        json={
            "note": "make up: preload the astro example",
            "expires_in": 900,
            "scopes": ["access:services!service=hubserve"],
        },
    )
    if response.status_code != 201:
        raise UpError(f"the hub refused a token for {admin!r}: {response.status_code}")
    model = response.json()
    return str(model["token"]), str(model["id"])


def _preload(url: str, up_token: str, admin: str, built: BuiltBundle, timeout: float) -> str:
    """Push and deploy the astro example for ``admin`` through hubserve; a summary line.

    A short-lived admin token (:func:`_admin_token`) does the work with the same
    :class:`~jupyter_extension.client.Client` a notebook uses, and is revoked at the end.
    """
    from jupyter_extension.client import Client

    with httpx.Client(
        base_url=f"{url}/hub/api", headers={"Authorization": f"token {up_token}"}, timeout=10
    ) as hub:
        token, token_id = _admin_token(hub, admin)
        try:
            with Client(f"{url}/services/hubserve/", token, timeout=60) as client:
                return _push_and_deploy(client, admin, built, timeout)
        finally:
            with contextlib.suppress(httpx.HTTPError):
                hub.delete(f"/users/{admin}/tokens/{token_id}")


def _push_and_deploy(client: Client, admin: str, built: BuiltBundle, timeout: float) -> str:
    """The idempotent part of :func:`_preload`.

    The model: a stored version with the same content is reused, else ``built`` is pushed.
    The deployment: created when missing; rolled only to a version pushed just now (the
    example changed since the last run); otherwise left as it is, whatever version it runs,
    so that what the admin did with it (a roll-back, a scale to 0) survives a restart. A
    deployment of that name serving another model is not touched.
    """
    from jupyter_extension.client import NotFound

    model = f"{admin}/{built.manifest.name}"
    try:
        versions = client.model(model).versions
    except NotFound:
        versions = []
    wanted = _content_hash(built.manifest.version)
    stored = next((v.version for v in versions if _content_hash(v.version) == wanted), None)
    pushed = stored is None
    version = client.push(built.archive, progress=False).version if stored is None else stored
    key = f"{admin}/{PRELOAD_DEPLOYMENT}"
    try:
        deployment = client.deployment(key)
    except NotFound:
        deployment = client.deploy(f"{model}:{version}", name=PRELOAD_DEPLOYMENT, replicas=1)
        how = "pushed and deployed" if pushed else "deployed"
    else:
        if deployment.model != model:
            return f"{key} serves {deployment.model}: left alone, {model}:{version} not deployed"
        if pushed and deployment.version != version:
            how = f"pushed, rolled from {deployment.version}"
            deployment = client.roll(key, version)
        else:
            how = "unchanged"
    if deployment.replicas > 0:
        deployment = client.wait_ready(key, timeout=timeout)
    status = deployment.status
    return (
        f"{key} runs {model}:{deployment.version}, {status.ready}/{status.desired} replica(s)"
        f" ready ({how})"
    )


def _offer_notebook(state: Path, admin: str) -> None:
    """Copy the example's notebook into the admin's home, unless a copy is there already
    (the admin's edits are kept). JupyterLab shows the home only, not the checkout."""
    target = state / "users" / admin / PRELOAD_NOTEBOOK.name
    if PRELOAD_NOTEBOOK.is_file() and not target.exists():
        shutil.copyfile(PRELOAD_NOTEBOOK, target)


def _start_hub(state: Path, log: IO[bytes], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
        cwd=state / "hub",
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches this script only; it stops the hub in order
    )


def _stop_hub(hub: subprocess.Popen[bytes]) -> None:
    """SIGTERM the hub's process group (the hub stops servers, service and proxy)."""
    if hub.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hub.pid, signal.SIGTERM)
        try:
            hub.wait(HUB_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"jupyterhub did not stop in {HUB_STOP_TIMEOUT:g} s; killing it", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(hub.pid, signal.SIGKILL)  # anything left in its group
    hub.wait()


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _wait_ready(
    url: str, hub: subprocess.Popen[bytes], pushing: Task, log: Path, timeout: float
) -> None:
    """Until the hub API and hubserve's healthz answer through the proxy, and the push ends."""
    deadline = time.monotonic() + timeout
    pending = {f"{url}/hub/api/", f"{url}/services/hubserve/healthz"}
    with httpx.Client(timeout=5) as client:
        while pending or pushing.is_alive():
            if hub.poll() is not None:
                raise UpError(
                    f"jupyterhub exited ({hub.returncode}); {log} ends with:\n{_log_tail(log)}"
                )
            if time.monotonic() > deadline:
                waiting = ", ".join(sorted(pending)) or "the example push"
                raise UpError(
                    f"not ready after {timeout:g} s (waiting for {waiting}); "
                    f"{log} ends with:\n{_log_tail(log)}"
                )
            for probe in sorted(pending):
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(probe).status_code == 200:
                        pending.discard(probe)
            time.sleep(0.25)


def _show(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    """No second Ctrl-C in the middle of stopping: stopping is bounded anyway."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from model_runtime.store import default_owner

    parser = argparse.ArgumentParser(
        prog="dev/up.py",
        description="Start hubserve's stack (JupyterHub, proxy, hubserve, S3) on this machine.",
    )
    parser.add_argument(
        "--state", type=Path, default=ROOT / ".hubserve", help="state directory (.hubserve)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("HUBSERVE_PORT", 8000)),
        help="the hub's public port (proxy); env HUBSERVE_PORT, default 8000",
    )
    parser.add_argument(
        "--s3-port",
        type=int,
        default=int(os.environ.get("HUBSERVE_S3_PORT", 8333)),
        help="the S3 server's port; env HUBSERVE_S3_PORT, default 8333",
    )
    parser.add_argument("--bucket", default="models", help="the model store's bucket")
    parser.add_argument(
        "--admin",
        default=default_owner().lower(),
        help="the hub's admin user, also the owner of the example models (default: you)",
    )
    parser.add_argument(
        "--chp",
        type=Path,
        default=Path(os.environ.get("HUBSERVE_CHP") or DEFAULT_CHP),
        help="configurable-http-proxy (env HUBSERVE_CHP; `make up` installs it)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for the stack to be ready"
    )
    parser.add_argument(
        "--no-preload",
        dest="preload",
        action="store_false",
        help=f"do not push and deploy the astro example ({PRELOAD_SOURCE})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The default SIGINT handler raises KeyboardInterrupt, even when started with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    except UpError as error:
        print(f"make up: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0


def _run(args: argparse.Namespace) -> int:
    from model_runtime.testing.s3server import S3Server

    started = time.monotonic()
    state: Path = args.state.resolve()
    hub_dir = state / "hub"
    hub_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(state)
    os.environ[MARKER] = str(state)  # inherited by everything started from here on
    leftovers = _kill_leftovers(state)
    if leftovers:
        print(f"stopped {len(leftovers)} process(es) left over by an earlier run:", flush=True)
        for pid, command in leftovers.items():
            print(f"  {pid}  {command[:120]}", flush=True)

    _check_models_user()
    # Before the hub starts: the preloaded deployment's sandbox shows the admin's home only
    # if it is there when its replica starts.
    share_home(state / "users" / args.admin)
    chp: Path = args.chp.resolve()
    if not os.access(chp, os.X_OK):
        raise UpError(
            f"configurable-http-proxy not found at {chp}: run `make up` (it installs it with "
            "npm into .hubserve/node), or set HUBSERVE_CHP / --chp"
        )
    if args.port == args.s3_port:
        raise UpError(f"--port and --s3-port are both {args.port}")
    _check_port(args.port, "hub", "--port", "HUBSERVE_PORT")
    _check_port(args.s3_port, "S3 server", "--s3-port", "HUBSERVE_S3_PORT")
    passwords = _passwords(hub_dir)
    up_token = _up_token(hub_dir)
    url = f"http://{HOST}:{args.port}"
    hub_log = hub_dir / "jupyterhub.log"

    with contextlib.ExitStack() as stack:
        stack.enter_context(lock)
        stack.callback(_final_sweep, state)  # runs last
        try:
            server = S3Server(state / "s3", port=args.s3_port)
            server.start()
            stack.callback(server.stop)
            keys = (server.access_key, server.secret_key)
            pushing = Task(
                "pushing the examples",
                _push_examples,
                server.endpoint,
                keys,
                args.bucket,
                state,
                args.admin,
            )
            pushing.start()
            building = None
            if args.preload:
                building = Task("packaging the astro example", _build_preload, state, pushing)
                building.start()

            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
                "HUBSERVE_UP_PORT": str(args.port),
                "HUBSERVE_UP_HUB_PORT": str(_free_port()),
                "HUBSERVE_UP_PROXY_API_PORT": str(_free_port()),
                "HUBSERVE_UP_SERVICE_PORT": str(_free_port()),
                "HUBSERVE_UP_CHP": str(chp),
                "HUBSERVE_UP_ADMIN": args.admin,
                "HUBSERVE_UP_BUCKET": args.bucket,
                "HUBSERVE_UP_S3_ENDPOINT": server.url,
                "HUBSERVE_UP_S3_ACCESS_KEY": server.access_key,
                "HUBSERVE_UP_S3_SECRET_KEY": server.secret_key,
            }
            with hub_log.open("wb") as log:
                hub = _start_hub(state, log, env)
            stack.callback(_stop_hub, hub)
            _wait_ready(url, hub, pushing, hub_log, args.timeout)
            refs = pushing.result()
            preloaded, preload_ok = "none (--no-preload)", False
            if building is not None:
                print(f"preloading the astro example ({PRELOAD_SOURCE}) ...", flush=True)
                try:
                    built = building.result()
                    try:
                        preloaded = _preload(url, up_token, args.admin, built, PRELOAD_TIMEOUT)
                    finally:
                        built.archive.unlink(missing_ok=True)
                    _offer_notebook(state, args.admin)
                    preload_ok = True
                except Exception as error:  # the stack is still useful without it
                    preloaded = f"NOT preloaded: {' '.join(str(error).split())}"
                    print(f"make up: preloading the astro example failed: {error}", flush=True)

            env_file = state / "env"
            store_env = {
                "HUBSERVE_STORE": f"s3://{args.bucket}",
                "HUBSERVE_S3_ENDPOINT": server.url,
                "HUBSERVE_S3_ACCESS_KEY": server.access_key,
                "HUBSERVE_S3_SECRET_KEY": server.secret_key,
            }
            env_file.write_text("".join(f"export {k}={v}\n" for k, v in store_env.items()))
            _print_banner(
                args,
                url,
                state,
                hub_log,
                env_file,
                server.url,
                refs,
                preloaded,
                preload_ok,
                passwords,
                started,
            )

            while True:
                time.sleep(1.0)
                if hub.poll() is not None:
                    raise UpError(
                        f"jupyterhub exited ({hub.returncode}); {hub_log} ends with:\n"
                        f"{_log_tail(hub_log)}"
                    )
                if not server.running:
                    raise UpError(f"the S3 server exited; see {server.log_path}")
        except KeyboardInterrupt:
            _ignore_signals()
            print("\nstopping (the hub, its servers and the service, then S3) ...", flush=True)
        finally:
            _ignore_signals()  # the stack unwinds: hub, S3 server, leftovers
    print("stopped.", flush=True)
    return 0


def _final_sweep(state: Path) -> None:
    leftovers = _kill_leftovers(state)
    if leftovers:
        print(f"killed {len(leftovers)} process(es) that outlived their parents:", flush=True)
        for pid, command in leftovers.items():
            print(f"  {pid}  {command[:120]}", flush=True)


def _print_banner(
    args: argparse.Namespace,
    url: str,
    state: Path,
    hub_log: Path,
    env_file: Path,
    s3_url: str,
    refs: list[str],
    preloaded: str,
    preload_ok: bool,
    passwords: dict[str, str],
    started: float,
) -> None:
    """The summary and first steps; ``preloaded`` says what became of the astro example,
    whose first step is shown when it is deployed (``preload_ok``)."""
    api = f"{url}/services/hubserve"
    astro = (
        f"""
     As {args.admin!r}, the Model Serving side panel shows the preloaded deployment
     {args.admin}/{PRELOAD_DEPLOYMENT}, and {PRELOAD_NOTEBOOK.name} in the home walks through
     the astro example: generate radio-sky images, segment one, then a folder as a batch job."""
        if preload_ok
        else ""
    )
    models = "\n".join(("                " if i else "") + r for i, r in enumerate(refs))
    print(
        f"""
hubserve is up at {url} ({time.monotonic() - started:.1f} s)

  hub           {url}   (JupyterHub + configurable-http-proxy; log {_show(hub_log)})
  log in        as {args.admin!r} (admin) with password {passwords["admin"]}
                or as any other name with password {passwords["user"]}
                (dev shared-password authenticator; kept in {_show(state / "hub/passwords.json")})
  hubserve      {api}/   (API docs: {api}/docs; data in {_show(state / "service")})
  model store   {s3_url}  bucket '{args.bucket}'  (SeaweedFS, data in {_show(state / "s3")})
  models        {models}
  deployment    {preloaded}

First steps:
  1. Open {url} and log in: JupyterLab starts (home: {_show(state / "users")}/<name>).{astro}
  2. Get an API token at {url}/hub/token (as {args.admin!r}, who owns the examples), then:
       export TOKEN=<the token>
       curl -H "Authorization: token $TOKEN" {api}/api/me
       curl -H "Authorization: token $TOKEN" {api}/api/models
       curl -H "Authorization: token $TOKEN" {api}/api/deployments/{args.admin}/{PRELOAD_DEPLOYMENT}
  3. Deploy the iris example, wait for "phase": "ready", call it:
       curl -H "Authorization: token $TOKEN" -H "Content-Type: application/json" \\
            -d '{{"model": "iris"}}' {api}/api/deployments
       curl -H "Authorization: token $TOKEN" {api}/api/deployments/{args.admin}/iris
       curl -H "Authorization: token $TOKEN" -H "Content-Type: application/json" \\
            -d '[[5.1, 3.5, 1.4, 0.2]]' {api}/d/{args.admin}/iris/classify
  4. The CLI, straight on the model store:
       source {_show(env_file)} && .venv/bin/hubserve list --all-owners

Ctrl-C stops everything.""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
