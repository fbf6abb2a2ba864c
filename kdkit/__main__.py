"""``python -m kdkit`` (also under ``torchrun --nproc_per_node=N -m kdkit train ...``)."""
import sys

from kdkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
