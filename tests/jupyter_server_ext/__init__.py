"""Tests of the Jupyter server extension (``make test-server-ext``: with pytest-jupyter)."""
