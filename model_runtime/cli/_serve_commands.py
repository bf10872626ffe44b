"""``serve`` (run a runtime in the foreground) and ``predict`` (call one)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..envs import EnvironmentManager
from ..errors import HubserveError
from ._common import store_options
from ._env_commands import env_policy_options, manager_from_options, prepare_for_bundle

if TYPE_CHECKING:  # the runtime's imports (FastAPI, ...) cost time every other command saves
    from ..runtime import RuntimeSettings


def _read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    secret = path.read_text().strip()
    if not secret:
        raise click.BadParameter(f"{path} is empty", param_hint="--api-token-file")
    return secret


def enter_environment(
    mode: str, manager: EnvironmentManager, bundle: Path, settings: RuntimeSettings
) -> None:
    """Run the rest of ``serve`` in the bundle's environment.

    An overlay goes first on ``sys.path`` (nothing of the bundle is imported yet). A full
    environment has its own interpreter, so this process becomes a runtime under it: the
    settings travel in the environment (``HUBSERVE_RUNTIME_LAUNCH``), never on the command
    line, where the gateway's secret would be visible to every user of the machine.
    """
    if mode == "auto":
        environment = prepare_for_bundle(manager, bundle)
        site, python = environment.site, environment.python
    else:
        folder = Path(mode)
        if not (folder / "env.json").is_file():
            raise click.BadParameter(f"{folder} is not a built environment", param_hint="--env")
        full = folder / "venv" / "bin" / "python"
        site, python = (None, full) if full.exists() else (folder / "site", None)
    if site is not None:
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p
        )
    if python is not None:
        from ..runtime import LAUNCH_ENV, launch_request

        os.environ[LAUNCH_ENV] = launch_request(str(bundle), settings)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(python, [str(python), "-m", "model_runtime.runtime"])  # noqa: S606


def register_serve_commands(cli: click.Group) -> None:
    @cli.command()
    @click.argument("source")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
    @click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
    @click.option(
        "--workers",
        default=1,
        show_default=True,
        type=click.IntRange(1, 64),
        help="Server processes, each with its own copy of the model.",
    )
    @click.option(
        "--threads",
        type=click.IntRange(1, 1024),
        default=None,
        help="torch threads per worker [default: the CPUs this process may use].",
    )
    @click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda:0.")
    @click.option(
        "--api-token-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="File holding the shared secret callers must send (X-Hubserve-Token).",
    )
    @click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option(
        "--max-queue-rows",
        type=click.IntRange(1),
        default=None,
        help="Rows a batching queue may hold before answering 503.",
    )
    @click.option(
        "--request-timeout",
        type=click.FloatRange(0, min_open=True),
        default=None,
        help="Seconds a request may wait for the model before a 504 [default: 240].",
    )
    @click.option(
        "--job-location",
        "job_locations",
        multiple=True,
        help="Folder or URI prefix batch jobs may use (repeat; default: any); {user} in its "
        "path is the caller's hub user name (with --api-token-file, from the gateway).",
    )
    @click.option("--trust-pickle", is_flag=True, help="Allow pickled model artifacts.")
    @click.option("--access-log", is_flag=True, help="Log every request.")
    @click.option(
        "--env",
        "env_mode",
        default="auto",
        show_default=True,
        help="Where the bundle's code runs: auto (build or reuse the environment its"
        " requirements need), none (this interpreter's environment as it is), or the folder"
        " of a built environment.",
    )
    @env_policy_options
    @store_options
    def serve(
        source: str,
        host: str,
        port: int,
        workers: int,
        threads: int | None,
        device: str,
        api_token_file: Path | None,
        tls_cert: Path | None,
        tls_key: Path | None,
        max_queue_rows: int | None,
        request_timeout: float | None,
        job_locations: tuple[str, ...],
        trust_pickle: bool,
        access_log: bool,
        env_mode: str,
        **store: Any,
    ) -> None:
        """Serve a bundle over HTTP until SIGTERM or Ctrl-C.

        SOURCE is a bundle directory or archive, a store reference ([OWNER/]NAME[:VERSION]
        with --store) or a URI such as s3://bucket/owner/name:version.
        """
        import os

        from ..runtime import RuntimeSettings, bundle_directory
        from ..runtime import serve as run_server

        if (tls_cert is None) != (tls_key is None):
            raise click.UsageError("--tls-cert and --tls-key go together")
        manager = manager_from_options(store)
        for key, value in store.items():  # the runtime reads store settings from the env
            if value is not None:
                os.environ[f"HUBSERVE_{key.upper()}"] = str(value)
        overrides: dict[str, Any] = {
            "host": host,
            "port": port,
            "workers": workers,
            "threads": threads,
            "device": device,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "trust_pickle": trust_pickle,
            "access_log": access_log,
            "api_token": _read_secret(api_token_file),
            "max_queue_rows": max_queue_rows,
            "request_timeout": request_timeout,
            "job_locations": list(job_locations) or None,
        }
        settings = RuntimeSettings(**{k: v for k, v in overrides.items() if v is not None})
        if env_mode != "none":
            source = str(bundle_directory(source, settings.cache_dir))
            enter_environment(env_mode, manager, Path(source), settings)
        run_server(source, settings)

    @cli.command()
    @click.option(
        "--socket",
        "socket_path",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Unix socket to listen on for launch requests (created mode 0600).",
    )
    @click.option(
        "--exit-with-parent",
        is_flag=True,
        help="Stop when the process that started the zygote exits (for supervisors).",
    )
    @click.option(
        "--parent-pid",
        type=click.IntRange(1),
        default=None,
        help="The supervisor's pid: stop once the zygote is no longer its child, even if it"
        " died before the zygote got going (implies --exit-with-parent).",
    )
    def zygote(socket_path: Path, exit_with_parent: bool, parent_pid: int | None) -> None:
        """Run a pre-warmed runtime launcher: replicas start by fork, without import costs."""
        import os

        parent = parent_pid or (os.getppid() if exit_with_parent else None)  # before imports
        # Before numpy is first imported: OpenBLAS starts its thread pool at load time.
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        from ..runtime._zygote import run_zygote

        run_zygote(socket_path, parent=parent)

    @cli.command()
    @click.argument("url")
    @click.argument("api")
    @click.option("--data", "-d", help="JSON input (use @FILE to read it from a file).")
    @click.option(
        "--file",
        "-f",
        "file_",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Send this file (.npy, .npz, .csv, .png, .jpg or any bytes).",
    )
    @click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write the response body to this file.",
    )
    @click.option(
        "--token-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="File with a token sent as 'Authorization: Bearer ...'.",
    )
    @click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait.")
    def predict(
        url: str,
        api: str,
        data: str | None,
        file_: Path | None,
        output: Path | None,
        token_file: Path | None,
        timeout: float,
    ) -> None:
        """Call API on the runtime at URL and print the result."""
        import httpx

        if (data is None) == (file_ is None):
            raise click.UsageError("give exactly one of --data and --file")
        headers = {}
        token = _read_secret(token_file)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if file_ is not None:
            body = file_.read_bytes()
            headers["Content-Type"] = _media_type(file_)
        else:
            assert data is not None
            text = Path(data[1:]).read_text() if data.startswith("@") else data
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
            body = text.encode()
            headers["Content-Type"] = "application/json"
        try:
            response = httpx.post(
                f"{url.rstrip('/')}/{api}", content=body, headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise HubserveError(f"cannot reach {url}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise HubserveError(f"{response.status_code}: {detail}")
        if output is not None:
            output.write_bytes(response.content)
        elif response.headers.get("content-type", "").startswith(("application/json", "text/")):
            click.echo(response.text)
        else:
            sys.stdout.buffer.write(response.content)


def _media_type(path: Path) -> str:
    return {
        ".npy": "application/x-npy",
        ".npz": "application/x-npz",
        ".csv": "text/csv",
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".json": "application/json",
        ".txt": "text/plain",
    }.get(path.suffix.lower(), "application/octet-stream")
