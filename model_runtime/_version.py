"""The single source of hubserve's version (read by packaging and written into bundles)."""

__version__ = "0.1.0"
