"""FacePass reindexer core: plain, typed, no Ray imports.

The Ray shells live in ``actors/``, ``serve_app/`` and ``jobs/``.
"""
