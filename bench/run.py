"""Run every benchmark script under bench/ (bench_*.py) and print their reports.

Each script is standalone, prints its own figures (ratios measured side by side in one run), and
exits non-zero only when it could not measure. Timings are never asserted by the test suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

here = Path(__file__).resolve().parent
scripts = sorted(here.glob("bench_*.py"))
only = sys.argv[1:]
failed = []
print(f"nfsentry benchmarks: {len(scripts)} script(s)")
for script in scripts:
    if only and script.stem not in only and script.stem.removeprefix("bench_") not in only:
        continue
    print(f"\n=== {script.stem} ===", flush=True)
    t0 = time.monotonic()
    rc = subprocess.call([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(here.parent)})
    print(f"--- {script.stem}: rc={rc} in {time.monotonic() - t0:.1f}s", flush=True)
    if rc:
        failed.append(script.stem)
if failed:
    print(f"\nbenchmarks that could not measure: {', '.join(failed)}")
    sys.exit(1)
