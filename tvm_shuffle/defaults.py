"""The defaults and plain choices every step shares, each in one place.

No imports: the CLIs read these to build ``--help`` before anything slow loads.
"""

INPUT_SHAPE = (1, 3, 224, 224)  # a zoo model's input, and the shape a report's file names leave out
SHUFFLE_MODES = ("fused", "stock")  # fused: shuffles folded into their neighbours; stock: separate kernels
WORK_DIR = "work"  # where tune keeps its records, relative to the working directory
