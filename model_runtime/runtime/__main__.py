"""``python -m model_runtime.runtime``: serve the launch request in ``HUBSERVE_RUNTIME_LAUNCH``.

How a runtime starts in a bundle's separate environment (its own interpreter): the caller
puts the source and the settings in the variable, never on a command line.
"""

from __future__ import annotations

import sys

from ..errors import HubserveError
from ._server import serve_launch_request

if __name__ == "__main__":
    try:
        serve_launch_request()
    except HubserveError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
