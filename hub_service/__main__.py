"""``python -m hub_service``: run the service with uvicorn.

Under JupyterHub (a managed service) the host and port come from ``JUPYTERHUB_SERVICE_URL``
and everything else from the ``JUPYTERHUB_*`` / ``HUBSERVE_*`` environment, read here, at
startup. Standalone, for development::

    echo '{"dev-token-123": {"name": "alice", "admin": true}}' > tokens.json
    HUBSERVE_STATIC_TOKEN_FILE=tokens.json HUBSERVE_SERVICE_URL=http://127.0.0.1:10101 \\
        python -m hub_service
    curl -H 'Authorization: token dev-token-123' http://127.0.0.1:10101/services/hubserve/api/me

Query strings are removed from the access log: the OAuth callback carries a one-time code.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from ._settings import HubServiceSettings
from .app import create_app


class _NoQueryInAccessLog(logging.Filter):
    """Drop the query string from uvicorn access-log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], args[3], args[4])
        return True


def main() -> None:
    settings = HubServiceSettings()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(name)s] %(message)s")
    logging.getLogger("uvicorn.access").addFilter(_NoQueryInAccessLog())
    try:
        app = create_app(settings)
    except ValueError as exc:  # a setting this machine cannot honour: say which, in one line
        sys.exit(f"hubserve: {exc}")
    uvicorn.run(
        app,
        host=settings.bind_host,
        port=settings.bind_port,
        proxy_headers=True,
        log_config=None,
    )


if __name__ == "__main__":
    main()
