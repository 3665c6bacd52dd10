"""Ray job entry points and command-line clients."""

import os

# Before Ray is imported (it reads this at import): no `uv run` hook for workers; see Makefile.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
