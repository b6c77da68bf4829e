"""Export a checkpoint to ONNX with a PyTorch parity check, optional INT8 and latency.

python tools/export_onnx.py model=best.pt imgsz=640 int8=True data=shapes
"""

import sys

from yolo_distill.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["export", *sys.argv[1:]]))
