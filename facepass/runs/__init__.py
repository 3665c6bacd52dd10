"""Runs: the reindex coordinator, the bulk stream, one run per session and the job book."""
