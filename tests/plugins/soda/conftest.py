"""Make the in-tree plugin importable when the editable install predates plugins/kdkit_soda."""
import sys
from pathlib import Path

try:
    import kdkit_soda  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "plugins"))
