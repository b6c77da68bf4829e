"""Benchmark: cost of a KD training step, ours vs Ultralytics' native distill_model= vs a plain step.

python tools/kd_step_cost.py [student=yolo11n.yaml] [teacher=teacher.pt] [imgsz=256] [batch=8] [steps=8]
    [recipe=default] [teacher_precision=auto|fp32|bf16|fp16] [memory=True]
"""

import sys

from yolo_distill.api import kd_step_cost
from yolo_distill.cli import parse_kv
from yolo_distill.log import to_stdout

if __name__ == "__main__":
    to_stdout()
    kd_step_cost(**parse_kv(sys.argv[1:]))
