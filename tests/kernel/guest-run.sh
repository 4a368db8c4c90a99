#!/bin/bash
# Runs inside the qemu guest, chrooted into the host's read-only / (see init), as root.
# Runs the project's own native-marked end-to-end tests against the stock kernel and leaves the
# result in the writable share $OUT:
#   pytest.log   pytest's output        junit.xml   pytest's junit report
#   rc           pytest's exit code     kernel      uname -r of the guest
#
# Environment (set by the job.sh the host writes):
#   NFSENTRY_REPO                  the repository (same path as on the host; read-only here)
#   NFSENTRY_VENV                  the venv to run (default $NFSENTRY_REPO/.venv)
#   NFSENTRY_GUEST_TIMEOUT         seconds for the whole pytest run (default 120)
#   NFSENTRY_GUEST_TEST_TIMEOUT    seconds per test (pytest-timeout, default 60)
#   NFSENTRY_GUEST_PYTEST_ARGS     test selection (default: -m native tests/e2e)
# The hypothesis plugin is not loaded: importing it costs ~5 s under TCG and the e2e tests do not
# use it (keep hypothesis options out of pyproject addopts, or drop "-p no:hypothesispytest").
set -u
OUT=/run/nfsentry-out
REPO=${NFSENTRY_REPO:?}
VENV=${NFSENTRY_VENV:-$REPO/.venv}
echo "$(uname -r)" > $OUT/kernel

export NFSENTRY_IN_GUEST=1                 # the qemu tier's host test skips itself in here
export NFSENTRY_EXPECT_BACKEND=native      # tests fail (not skip) when the native path is missing
export NFSENTRY_VENV="$VENV"
export PYTHONDONTWRITEBYTECODE=1
export HYPOTHESIS_STORAGE_DIRECTORY=/run/tmp/hypothesis
export TMPDIR=/run/tmp HOME=/run/home

cd "$REPO" || { echo 3 > $OUT/rc; echo "guest: cannot cd $REPO" | tee $OUT/pytest.log; exit 3; }
# shellcheck disable=SC2086
SELECT=${NFSENTRY_GUEST_PYTEST_ARGS:--m native tests/e2e}
echo "[guest] $(uname -r): pytest $SELECT"
timeout -s INT -k 15 "${NFSENTRY_GUEST_TIMEOUT:-120}" \
    "$VENV/bin/python" -m pytest -p no:cacheprovider --color=no -v -rfEs --tb=short --durations=8 -p no:hypothesispytest \
        --timeout "${NFSENTRY_GUEST_TEST_TIMEOUT:-60}" \
        --junitxml=$OUT/junit.xml -o junit_family=xunit1 $SELECT 2>&1 | tee $OUT/pytest.log
rc=${PIPESTATUS[0]}
echo "$rc" > $OUT/rc
sync
exit "$rc"
