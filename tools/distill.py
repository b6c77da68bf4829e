"""Thin script over the library: same as `yolo-distill train key=value ...`.

python tools/distill.py --help
"""

import sys

from yolo_distill.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
