"""The distillation bar across regimes, from finished bench rows (nothing is trained or written).

python tools/kd_verdict.py regime-small regime-long cpu-small:_long_teacher
"""

import sys

from yolo_distill.api import kd_verdict

if __name__ == "__main__":
    print(kd_verdict(sys.argv[1:] or ["regime-small", "regime-long", "cpu-small:_long_teacher"]))
