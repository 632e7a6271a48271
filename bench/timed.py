"""One ``testbed run`` in its own process, timed, for the benchmarks that compare whole runs.

The record (the caller's fields, the process's wall-clock and whatever ``parse`` reads from its stderr) goes to
``RUN_DIR/bench.json``; a run already finished there (``summary.json`` and the record) is read, not re-run,
so a benchmark interrupted between runs resumes.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Callable


def timed_run(run_dir: Path, cmd: list[str], record: dict, parse: Callable[[str], dict] | None = None) -> dict:
    path = run_dir / "bench.json"
    if path.is_file() and (run_dir / "summary.json").is_file():
        return json.loads(path.read_text())
    print(f"running {run_dir.name} ...", flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"{run_dir.name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rec = {**record, "wall_s": wall, **(parse(p.stderr) if parse else {})}
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return rec
