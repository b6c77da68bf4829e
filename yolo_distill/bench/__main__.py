"""``python -m yolo_distill.bench recipe=R out=DIR only=ROW [repeats= seed= device=]``: one bench process.

What :func:`yolo_distill.bench.jobs.run_jobs` starts for each row; the user-facing command is ``yolo-distill bench``.
"""

from __future__ import annotations

import sys

import yaml

from yolo_distill.bench.runner import run_bench
from yolo_distill.log import to_stdout


def main(argv: list[str]) -> int:
    kv = {}
    for a in argv:
        k, _, v = a.partition("=")
        kv[k] = yaml.safe_load(v) if v else None
    to_stdout(verbose=True)  # the row's log file is where a user looks: always at INFO
    run_bench(**kv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
