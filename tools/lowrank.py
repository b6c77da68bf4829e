"""Thin script over the library: same as `yolo-distill lowrank key=value ...`.

python tools/lowrank.py model=teacher.pt gflops=0.6x out=lowrank.pt
"""

import sys

from yolo_distill.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["lowrank", *sys.argv[1:]]))
