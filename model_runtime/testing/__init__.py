"""Test and development helpers: real servers started on loopback."""
