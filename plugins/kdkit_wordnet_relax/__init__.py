"""kdkit built-in plugin ``wordnet_relax``: crossmodal knowledge distillation with WordNet-relaxed
CLIP text embeddings (Guo et al., arXiv 2503.24017).

Registers

* the method ``wordnet_relax`` (``kdkit train --method wordnet_relax``), and
* the text relaxer ``wordnet`` (other plugins can register their own relaxers under the same
  hook and select them with ``--set relax.relaxer=NAME``).

It uses only kdkit's public plugin API and is discovered through the ``kdkit`` entry-point group
like any third-party plugin.  Importing it is cheap: torch, open_clip, nltk and faiss load only
when a run starts.  See docs/wordnet_relax.md.
"""
from __future__ import annotations

import kdkit

__all__ = ["kdkit_register_methods", "kdkit_register_text_relaxers"]


@kdkit.hookimpl
def kdkit_register_methods(register):
    register("wordnet_relax", "kdkit_wordnet_relax.method:WordNetRelaxMethod",
             description="crossmodal KD with WordNet-relaxed CLIP text embeddings (arXiv 2503.24017): "
                         "T_m + T_x teachers, image-only student, label-leakage sweep")


@kdkit.hookimpl
def kdkit_register_text_relaxers(register):
    # options=None: the method's `relax` section declares the relaxer's keys (kdkit_wordnet_relax.config)
    register("wordnet", "kdkit_wordnet_relax.relaxer:WordNetRelaxer",
             description="WordNet noun pool filtered by spherical K-means of CLIP image embeddings, "
                         "soft retrieval per image, offensive-lemma blocklist")
