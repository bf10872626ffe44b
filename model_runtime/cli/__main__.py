"""``python -m model_runtime.cli``: the ``hubserve`` command without its console script."""

from . import main

main()
