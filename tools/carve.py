"""Thin script over the library: same as `yolo-distill carve key=value ...`.

python tools/carve.py model=teacher.pt target=yolo11n.yaml out=carved.pt
"""

import sys

from yolo_distill.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["carve", *sys.argv[1:]]))
