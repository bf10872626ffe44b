"""``python -m model_runtime.sandbox [--cgroup PROCS]... -- COMMAND...``: run a command in a
sandbox whose profile (JSON) is in ``HUBSERVE_SANDBOX_PROFILE``; exit with its status.

The local backend starts replicas that cannot be forked from its zygote this way (a bundle's
separate environment, or no zygote). The profile is passed in the environment, and removed
from it before the command starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import PROFILE_ENV, Profile, SandboxError, run_sandboxed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m model_runtime.sandbox")
    parser.add_argument("--cgroup", action="append", default=[], help="a cgroup.procs to join")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    try:
        profile = Profile.from_json(json.loads(os.environ.pop(PROFILE_ENV)))
    except (KeyError, ValueError, TypeError) as exc:
        print(f"Error: no valid sandbox profile in {PROFILE_ENV} ({exc})", file=sys.stderr)
        return 2
    try:
        return run_sandboxed(profile, command, args.cgroup)
    except (SandboxError, OSError) as exc:
        print(f"Error: cannot make the sandbox: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
