"""Benchmarks: `python -m rd_jax.bench <name> --out=x.json` (see __main__.py and common.py)."""
