"""Servers under test, each a small script run as a pinned subprocess by the harness."""
