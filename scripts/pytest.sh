#!/usr/bin/env bash
# Runs pytest; "no tests ran" (exit 5) means the suite was not collected: that is a failure, said out loud.
set -uo pipefail
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests for: $* -- treating as a failure" >&2
  exit 1
fi
exit "$rc"
