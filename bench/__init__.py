"""Throughput benchmark: the bare model, the seed's sequential loop and the Ray pipeline.

``python -m bench.run --n 300`` (or ``make bench N=300``); see ``bench/run.py``.
"""
