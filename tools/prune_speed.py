"""Benchmark: does pruning turn into ONNX Runtime speed? Prune to GFLOPs targets with several channel multiples
and time every variant interleaved (plus natively small references).

python tools/prune_speed.py model=datasets/shapes-teacher/yolo11s.pt gflops_ratios=[0.5,0.3] round_to=[8,16] \
    references=[yolo11n.yaml] imgsz=640 runs=30
"""

import sys

from yolo_distill.api import prune_speed
from yolo_distill.cli import parse_kv
from yolo_distill.log import to_stdout

if __name__ == "__main__":
    to_stdout()
    prune_speed(**parse_kv(sys.argv[1:]))
