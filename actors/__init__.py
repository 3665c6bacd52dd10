"""Thin Ray shells around the core: embedding actors (``embedding.py``), the index writer
(``writer.py``), the pool (``pool.py``) and every Ray call it makes (``ray_calls.py``).

The package imports none of them, so a module here that imports a sibling never loops back
through this file.
"""
