"""Thin script over the library: same as `yolo-distill prune key=value ...`.

python tools/prune_yolo.py --help
"""

import sys

from yolo_distill.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["prune", *sys.argv[1:]]))
