"""``python -m kdkit.bench``: see :func:`kdkit.bench.main`."""
import sys

from kdkit.bench import main

sys.exit(main())
