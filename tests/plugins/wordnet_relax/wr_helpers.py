"""Constants and helpers shared by the wordnet_relax tests (a uniquely named module, so that
``from wr_helpers import ...`` never picks up another directory's conftest)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
try:
    import kdkit_wordnet_relax  # noqa: F401
except ImportError:  # the editable install predates plugins/kdkit_wordnet_relax
    sys.path.insert(0, str(ROOT / "plugins"))

DEBIAN_WORDNET = Path("/usr/share/wordnet")
HAVE_DEBIAN_WORDNET = (DEBIAN_WORDNET / "data.noun").is_file() and (DEBIAN_WORDNET / "index.noun").is_file()
needs_debian_wordnet = pytest.mark.skipif(
    not HAVE_DEBIAN_WORDNET,
    reason="Debian's WordNet 3.0 is not installed (apt-get install wordnet-base wordnet-sense-index)",
)

#: A small noun pool (pool=file): shapes-related words, animals, objects; one blocklisted lemma.
POOL_WORDS = """
circle square triangle star cross heart ring arrow crescent diamond hexagon pentagon ellipse
rectangle polygon sphere cube pyramid cone cylinder spiral wheel coin plate clock moon sun
kite shield flag banner sign badge button disc dot line stripe grid fox dog cat wolf horse
whale shark eagle apple pear lemon tree flower leaf stone shell motherfucker
""".split()

#: Overrides for fast end-to-end runs (seconds): 60 training images, micro CLIP, convnets.
TINY = [
    "data.name=shapes", "data.train_per_class=6", "data.test_per_class=3", "data.augment=none",
    "clip.model=kdkit-micro", "clip.batch_size=64",
    "relax.pool=file", "relax.niter=10", "relax.nredo=1", "relax.min_cluster_size=5", "relax.top_n=3",
    "teachers=[{name: convnet, width: 4, augment: strong}, {name: convnet, width: 4, augment: weak}]",
    "student.name=convnet", "student.width=4",
    "teacher_train.epochs=1", "teacher_train.batch_size=16",
    "train.epochs=1", "train.batch_size=16",
    "tx.train.epochs=20", "tx.train.batch_size=16", "tx.hidden=32",
    "logging.progress=false",
]



def run_method(manager, sets, out, **kwargs):
    from kdkit.engine import train

    return train("wordnet_relax", sets=sets, out=out, manager=manager, **kwargs)
