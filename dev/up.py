"""``make up``: start hubserve's stack on this machine with embedded defaults.

Today the stack is the model store: a real S3 server (SeaweedFS, standing in for MinIO) with
its data under ``.hubserve/``, and the example model pushed to it, so the ``hubserve`` CLI
has something to list, show and pull. It writes ``.hubserve/env`` with the variables that
point the CLI at it, stays in the foreground, and stops everything cleanly on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from model_runtime import S3Store, build_bundle
from model_runtime.store import default_owner
from model_runtime.testing.s3server import S3Server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["examples/iris/iris.py:service"]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _push_examples(store: S3Store, state: Path, owner: str) -> list[str]:
    """Push each example unless its latest version already has the same content."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=ROOT / ".hubserve")
    parser.add_argument(
        "--s3-port", type=int, default=int(os.environ.get("HUBSERVE_S3_PORT", 8333))
    )
    parser.add_argument("--bucket", default="models")
    args = parser.parse_args()
    state: Path = args.state
    state.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    port = args.s3_port if _port_free(args.s3_port) else None
    server = S3Server(state / "s3", port=port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        store = S3Store(
            server.endpoint,
            args.bucket,
            access_key=server.access_key,
            secret_key=server.secret_key,
            secure=False,
        )
        owner = default_owner()
        refs = _push_examples(store, state, owner)
        env = {
            "HUBSERVE_STORE": f"s3://{args.bucket}",
            "HUBSERVE_S3_ENDPOINT": server.url,
            "HUBSERVE_S3_ACCESS_KEY": server.access_key,
            "HUBSERVE_S3_SECRET_KEY": server.secret_key,
        }
        env_file = state / "env"
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        print(
            f"""
hubserve is up ({time.monotonic() - started:.1f} s).

  model store   {server.url}  bucket '{args.bucket}'  (SeaweedFS, data in {state / "s3"})
  models        {chr(10).join("                " + r if i else r for i, r in enumerate(refs))}

First steps, in another terminal:
  source {env_file}
  .venv/bin/hubserve list --all-owners
  .venv/bin/hubserve show {owner}/iris
  .venv/bin/hubserve push examples/iris/iris.py:service

Ctrl-C stops everything.""",
            flush=True,
        )
        try:
            while not stop.wait(1.0):
                if not server.running:
                    print(f"the S3 server exited; see {server.log_path}", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
    finally:
        server.stop()
        print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
