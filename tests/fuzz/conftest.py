"""Makes `from _fuzz import fuzz_settings` work under any pytest import mode."""
import sys
from pathlib import Path

_FUZZ_DIR = str(Path(__file__).resolve().parent)
if _FUZZ_DIR not in sys.path:
    sys.path.insert(0, _FUZZ_DIR)
