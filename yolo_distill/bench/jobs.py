"""The bench's process scheduler: rows side by side, each in its own process, once the rows it builds on are done."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from yolo_distill.bench.spec import Row
from yolo_distill.log import LOGGER


def run_jobs(recipe: Path, out_dir: Path, rows: list[Row], names: list[str], jobs: int, overrides: dict,
             rerun: list[str] | None = None) -> list[str]:  # fmt: skip
    """Run the rows ``names`` as one-row bench processes (``python -m yolo_distill.bench``), up to ``jobs`` at once.

    A row starts once every row it refers to (``@row``) and that is among ``names`` has finished; one whose
    reference failed is skipped. Each process writes ``out_dir/logs/ROW.log`` and its results into the shared
    ``results.json`` (merged on write). A bench stopped here stops its row processes; their finished rows are cached
    and a finished training is picked up again.

    Returns:
        ``"ROW (why; log)"`` for each row that failed or was skipped; empty when all finished.
    """
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    todo = [r for r in rows if r.name in names]
    deps = {r.name: set(r.refs()) & set(names) for r in todo}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    finished: set[str] = set()
    failed: dict[str, str] = {}
    args = [f"{k}={v}" for k, v in overrides.items() if v is not None]
    try:
        while todo or running:
            for r in list(todo):
                n = r.name
                if broken := deps[n] & failed.keys():
                    failed[n] = f"skipped: {sorted(broken)} failed"
                    todo.remove(r)
                elif len(running) < jobs and deps[n] <= finished:
                    cmd = [sys.executable, "-m", "yolo_distill.bench", f"recipe={recipe}", f"out={out_dir}",
                           f"only={n}", *args, *([f"rerun={n}"] if n in (rerun or []) else [])]  # fmt: skip
                    with open(logs / f"{n}.log", "w") as log:
                        running[n] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.time())
                    LOGGER.info("bench: started %s (log: %s)", n, log.name)
                    todo.remove(r)
            time.sleep(0.5)
            for n, (proc, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[n]
                if proc.returncode == 0:
                    finished.add(n)
                    LOGGER.info("bench: %s finished in %.0f s", n, time.time() - t0)
                else:
                    log = logs / f"{n}.log"
                    tail = log.read_text().strip().splitlines()[-1:] or [""]
                    failed[n] = f"exit code {proc.returncode}: {tail[0]}; log {log}"
                    LOGGER.info("bench: %s FAILED (%s)", n, failed[n])
    finally:
        for proc, _ in running.values():  # the bench itself was stopped: stop its rows too
            proc.terminate()
    return [f"{n} ({why})" for n, why in failed.items()]
