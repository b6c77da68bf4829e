"""Thin script over the library: same as `yolo-distill bench key=value ...`.

python tools/benchmark.py --help
"""

import sys

from yolo_distill.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
