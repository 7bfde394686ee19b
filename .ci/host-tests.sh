#!/usr/bin/env bash
# Host tests in the active env: pytest with the skip reasons shown (-rs); exit 1 when nothing ran or
# anything was skipped, so a host test that runs nothing cannot pass.
#   bash .ci/host-tests.sh TEST_FILE...
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
python -m pytest -q -rs -p no:cacheprovider "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" -eq 5 ] && { echo "host tests: pytest collected no tests: failing on purpose" >&2; exit 1; }
if [ "$status" -eq 0 ] && grep -Eq '[0-9]+ skipped' "$log"; then
  echo "host tests: some tests were skipped (reasons above): failing on purpose" >&2
  exit 1
fi
exit "$status"
