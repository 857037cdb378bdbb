"""Micro-benchmarks, kept outside the tests (after msgspec's ``benchmarks/``)."""
