"""kdkit.lazy.lazy_import: a module imported on first attribute access."""
from __future__ import annotations

import subprocess
import sys


def test_imports_on_first_use_only():
    code = (
        "import sys\n"
        "from kdkit.lazy import lazy_import\n"
        "json_mod = lazy_import('json')\n"
        "sys.modules.pop('json', None)\n"
        "assert 'not loaded yet' in repr(json_mod)\n"
        "assert 'colorsys' not in sys.modules\n"
        "c = lazy_import('colorsys')\n"
        "assert 'colorsys' not in sys.modules\n"
        "assert c.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)\n"
        "assert 'colorsys' in sys.modules and 'loaded' in repr(c)\n"
        "assert 'rgb_to_hsv' in dir(c)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_missing_module_fails_at_first_use_with_the_import_error():
    from kdkit.lazy import lazy_import

    missing = lazy_import("kdkit_no_such_module")
    try:
        missing.anything
    except ModuleNotFoundError as exc:
        assert "kdkit_no_such_module" in str(exc)
    else:
        raise AssertionError("expected ModuleNotFoundError")
