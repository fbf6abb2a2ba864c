"""The ``wordnet`` text relaxer: a WordNet noun pool filtered by clusters of CLIP image embeddings.

Text-relaxer contract (what the ``wordnet_relax`` method expects from any component registered
under ``kdkit_register_text_relaxers``)::

    relaxer = factory(**options)          # options: the keys of the config section ``relax``
                                          # except ratio, tau, relaxer, sweep
    vocab = relaxer.build(class_names, image_embeddings, encoder, cache_dir=None, log=print)
    vocab.words       # list[str], M relaxed nouns
    vocab.embeddings  # float tensor [M, d], L2-normalised CLIP text embeddings
    vocab.info        # dict, merged into summary.json under "relax"

``image_embeddings`` are the L2-normalised CLIP embeddings of the training images and
``encoder`` a :class:`kdkit.ClipEncoder` (``encode_words``, ``identity``).  The method then
does the per-image soft retrieval ``t = normalize(softmax(v @ N.T / tau) @ N)``.

What :class:`WordNetRelaxer` does (the authors' pipeline, see docs/wordnet_relax.md):

1. noun pool — ``pool: all``: every WordNet noun lemma (117,798 in WordNet 3.0, underscores
   become spaces); ``pool: relations``: lemmas of the hypernyms / hyponyms / siblings of each
   class's synset (``senses`` picks the synset per class, default the first noun sense);
   ``pool: file``: one noun per line from ``pool_file``.  ``pool_size`` caps the pool to a
   seeded random sample (logged loudly and recorded);
2. the blocklist removes offensive lemmas;
3. every noun is embedded with the template ensemble (cached per word under a key of the CLIP
   identity and the templates, so a changed pool only encodes the new words);
4. spherical K-means (faiss) over the image embeddings, ``K = num_clusters`` clamped to
   ``[1, n_images // min_cluster_size]``; centres = normalised member means; every noun goes
   to its argmax cluster under ``softmax(centres @ nouns.T, dim=0)`` and the ``top_n`` nouns of
   each cluster (by that probability) are kept.  The result is cached under a key of
   everything it depends on.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from kdkit import ConfigError, KdkitError

from kdkit_wordnet_relax.blocklist import apply_blocklist, build_blocklist, normalize_lemma
from kdkit_wordnet_relax.config import POOLS, RELATIONS
from kdkit_wordnet_relax.paths import digest, file_digest, load_keyed, save_keyed, tensor_digest

log = logging.getLogger("kdkit.wordnet_relax")


#: Bump when the selection algorithm changes (it keys the caches).
ALGORITHM_VERSION = 1

#: The 7-template prompt ensemble of the authors' code (``relax.templates: null``).
TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


@dataclass
class RelaxedVocabulary:
    words: list[str]
    embeddings: "object"  # torch.Tensor [M, d]
    info: dict = field(default_factory=dict)


def _synset_for(wn, name: str, senses: dict):
    """The synset used for class ``name``: ``senses[name]`` or the first noun sense."""
    wanted = senses.get(name) or senses.get(name.replace(" ", "_"))
    if wanted:
        try:
            synset = wn.synset(str(wanted))
        except Exception as exc:  # nltk raises WordNetError / ValueError
            raise ConfigError(f"relax.senses.{name}: {wanted!r} is not a WordNet synset ({exc}); use a name "
                              f"like 'fox.n.01' (python -c \"from nltk.corpus import wordnet as wn; "
                              f"print(wn.synsets('{name}', 'n'))\")") from None
        if synset.pos() != "n":
            raise ConfigError(f"relax.senses.{name}: {wanted!r} is not a noun synset")
        return synset
    for candidate in (name.replace(" ", "_"), name.split()[-1] if name.split() else name):
        synsets = wn.synsets(candidate, pos="n")
        if synsets:
            return synsets[0]
    return None


def relation_lemmas(wn, class_names: Sequence[str], relations: Iterable[str] = RELATIONS,
                    senses: dict | None = None) -> tuple[list[str], dict]:
    """Lemmas related to each class's synset (sorted, unique) and per-class details."""
    senses = dict(senses or {})
    relations = list(relations)
    bad = [r for r in relations if r not in RELATIONS]
    if bad or not relations:
        raise ConfigError(f"relax.relations: expected a non-empty list of {', '.join(RELATIONS)}; got {relations}")
    words: set[str] = set()
    details: dict = {}
    for name in class_names:
        synset = _synset_for(wn, name, senses)
        if synset is None:
            details[name] = {"synset": None}
            log.warning("wordnet_relax: class %r has no WordNet noun synset; it adds no relation nouns", name)
            continue
        related = []
        if "hypernyms" in relations:
            related += synset.hypernyms() + synset.instance_hypernyms()
        if "hyponyms" in relations:
            related += synset.hyponyms() + synset.instance_hyponyms()
        if "siblings" in relations:
            for hyper in synset.hypernyms():
                related += [s for s in hyper.hyponyms() if s != synset]
        lemmas = {normalize_lemma(l.name()) for s in related for l in s.lemmas()}
        details[name] = {"synset": synset.name(), "nouns": len(lemmas)}
        words |= lemmas
    return sorted(words), details


def all_noun_lemmas(wn) -> list[str]:
    """Every WordNet noun lemma, underscores as spaces, sorted, unique."""
    return sorted({l.replace("_", " ") for l in wn.all_lemma_names(pos="n")})


def _clamp_clusters(requested: int, n_images: int, min_cluster_size: int) -> int:
    upper = max(1, n_images // max(1, int(min_cluster_size)))
    return max(1, min(int(requested), upper))


def select_by_clusters(image_emb, noun_emb, num_clusters: int, top_n: int, niter: int, nredo: int,
                       seed: int) -> tuple[list[int], dict]:
    """Indices of the nouns kept (cluster by cluster) and clustering details.

    Spherical K-means (faiss) over ``image_emb``; centres are the normalised means of their
    members (faiss's centroid when a cluster ends up empty); each noun goes to its argmax
    cluster under ``softmax(centres @ nouns.T, dim=0)``; per cluster the ``top_n`` nouns by
    that probability are kept.
    """
    import faiss
    import numpy as np
    import torch
    import torch.nn.functional as F

    x = F.normalize(image_emb.float(), dim=-1).cpu().numpy().astype(np.float32, copy=True)
    n, d = x.shape
    k = int(num_clusters)
    if k > n:
        raise KdkitError(f"cannot make {k} clusters from {n} images")
    km = faiss.Kmeans(d, k, niter=int(niter), nredo=int(nredo), spherical=True, seed=int(seed),
                      verbose=False, min_points_per_centroid=1, max_points_per_centroid=max(256, n))
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign[:, 0]
    centres = torch.from_numpy(np.array(km.centroids, dtype=np.float32))
    xt = torch.from_numpy(x)
    sizes = np.bincount(assign, minlength=k)
    for c in range(k):
        if sizes[c] > 0:
            centres[c] = xt[torch.from_numpy(assign == c)].mean(0)
    centres = F.normalize(centres, dim=-1)
    nouns = F.normalize(noun_emb.float(), dim=-1)
    probs = torch.softmax(centres @ nouns.T, dim=0)  # [K, M], over clusters
    best = probs.argmax(dim=0)
    keep: list[int] = []
    per_cluster = []
    for c in range(k):
        members = torch.nonzero(best == c).flatten()
        if members.numel() == 0:
            per_cluster.append(0)
            continue
        scores = probs[c, members]
        order = torch.argsort(scores, descending=True, stable=True)[: int(top_n)]
        chosen = members[order].tolist()
        keep.extend(chosen)
        per_cluster.append(len(chosen))
    info = {"clusters": k, "cluster_sizes": sizes.tolist(), "nouns_per_cluster": per_cluster,
            "objective": float(km.obj[-1]) if len(km.obj) else None}
    return keep, info


class WordNetRelaxer:
    """The ``wordnet`` text relaxer (see the module docstring)."""

    def __init__(
        self,
        pool: str = "all",
        pool_file: str | None = None,
        pool_size: int | None = None,
        relations: Sequence[str] = RELATIONS,
        senses: dict | None = None,
        exclude_class_names: bool = False,
        blocklist: bool = True,
        blocklist_extra: Sequence[str] | str | None = None,
        templates: Sequence[str] | None = None,
        num_clusters: int = 150,
        top_n: int = 5,
        min_cluster_size: int = 39,
        niter: int = 300,
        nredo: int = 10,
        seed: int = 0,
        wordnet_cache_dir: str | None = None,
        **unknown,
    ):
        if unknown:
            raise ConfigError(f"text relaxer 'wordnet': unknown option(s) {', '.join(sorted(unknown))}")
        if pool not in POOLS:
            raise ConfigError(f"relax.pool: expected one of {', '.join(POOLS)}; got {pool!r}")
        if pool == "file" and not pool_file:
            raise ConfigError("relax.pool=file needs relax.pool_file (one noun per line)")
        if pool_size is not None and int(pool_size) < 0:
            raise ConfigError(f"relax.pool_size must be >= 0 (0: the whole pool); got {pool_size}")
        if int(num_clusters) < 1 or int(top_n) < 1:
            raise ConfigError("relax.num_clusters and relax.top_n must be >= 1")
        self.pool = pool
        self.pool_file = pool_file
        self.pool_size = int(pool_size) if pool_size else None  # 0 / None: no cap
        self.relations = list(relations)
        self.senses = dict(senses or {})
        self.exclude_class_names = bool(exclude_class_names)
        self.use_default_blocklist = bool(blocklist)
        self.blocklist_extra = blocklist_extra
        self.templates = list(templates) if templates else list(TEMPLATES)
        for t in self.templates:
            if "{}" not in t:
                raise ConfigError(f"relax.templates: every template needs '{{}}' for the noun; got {t!r}")
        self.num_clusters = int(num_clusters)
        self.top_n = int(top_n)
        self.min_cluster_size = int(min_cluster_size)
        self.niter = int(niter)
        self.nredo = int(nredo)
        self.seed = int(seed)
        self.wordnet_cache_dir = wordnet_cache_dir
        self.blocklist = build_blocklist(self.use_default_blocklist, self.blocklist_extra)

    # --- pool -----------------------------------------------------------------------------
    def _wordnet(self):
        from kdkit_wordnet_relax.wordnet_data import get_wordnet

        return get_wordnet(self.wordnet_cache_dir)

    def pool_definition(self, class_names: Sequence[str]) -> dict:
        """Everything the raw pool depends on (part of the cache keys)."""
        definition = {"pool": self.pool, "pool_size": self.pool_size, "seed": self.seed,
                      "exclude_class_names": self.exclude_class_names}
        if self.pool == "relations":
            definition.update(relations=self.relations, senses=self.senses, classes=list(class_names))
        if self.pool == "file":
            definition["pool_file"] = file_digest(self.pool_file) if Path(self.pool_file).is_file() else None
        if self.exclude_class_names:
            definition["classes"] = list(class_names)
        return definition

    def noun_pool(self, class_names: Sequence[str]) -> tuple[list[str], dict]:
        """The pool after the blocklist (and the cap); ``info`` records sizes and drops."""
        info: dict = {"pool": self.pool}
        if self.pool == "all":
            words = all_noun_lemmas(self._wordnet())
        elif self.pool == "relations":
            words, details = relation_lemmas(self._wordnet(), class_names, self.relations, self.senses)
            info["senses"] = {k: v.get("synset") for k, v in details.items()}
        else:
            path = Path(os.path.expanduser(str(self.pool_file)))  # an unknown ~user: not found, no crash
            if not path.is_file():
                raise ConfigError(f"relax.pool_file: {path} does not exist")
            words = sorted({normalize_lemma(l) for l in path.read_text(encoding="utf-8").splitlines()
                            if l.strip() and not l.lstrip().startswith("#")})
        info["pool_size_full"] = len(words)
        words, dropped = apply_blocklist(words, self.blocklist)
        info["blocked"] = len(dropped)
        if self.exclude_class_names:
            names = {normalize_lemma(c) for c in class_names}
            before = len(words)
            words = [w for w in words if normalize_lemma(w) not in names]
            info["excluded_class_names"] = before - len(words)
        if self.pool_size is not None and len(words) > self.pool_size:
            rng = random.Random(digest(["pool-cap", self.seed, self.pool_size]))
            words = sorted(rng.sample(words, self.pool_size))
            info["pool_capped"] = True
        else:
            info["pool_capped"] = False
        info["pool_size_used"] = len(words)
        if not words:
            raise KdkitError(f"the noun pool is empty (pool={self.pool!r}, after the blocklist); "
                             f"check relax.pool / relax.senses / relax.blocklist_extra")
        return words, info

    # --- embeddings -----------------------------------------------------------------------
    def embed_words(self, words: Sequence[str], encoder, cache_dir: Path | None,
                    log_fn: Callable[[str], None] = print):
        """Template-ensemble embeddings of ``words``, reusing the per-word cache."""
        import torch

        key = {"kind": "noun-embeddings", "clip": encoder.identity, "templates": self.templates, "v": 1}
        path = Path(cache_dir) / f"nouns-{digest(key)}.pt" if cache_dir is not None else None
        store: dict = {}
        if path is not None:
            blob = load_keyed(path, key)
            if blob is not None:
                store = dict(zip(blob["words"], blob["embeddings"].unbind(0))) if len(blob["words"]) else {}
        missing = [w for w in dict.fromkeys(words) if w not in store]
        if missing:
            log_fn(f"wordnet_relax: encoding {len(missing)} nouns x {len(self.templates)} templates with CLIP "
                   f"{encoder.info.model} ({len(store)} cached)")
            state = {"next": 1}

            def progress(done, total):
                if len(missing) < 5000:
                    return
                while state["next"] < 10 and done >= total * state["next"] / 10:
                    state["next"] += 1
                    log_fn(f"wordnet_relax:   {done // len(self.templates)}/{len(missing)} nouns encoded")

            emb = encoder.encode_words(missing, self.templates, progress=progress)
            store.update(zip(missing, emb.unbind(0)))
            if path is not None:
                all_words = sorted(store)
                save_keyed(path, key, {"words": all_words,
                                       "embeddings": torch.stack([store[w] for w in all_words])})
        return torch.stack([store[w] for w in words]) if words else torch.zeros(0, encoder.embed_dim)

    # --- the whole pipeline ---------------------------------------------------------------
    def build(self, class_names: Sequence[str], image_embeddings, encoder, cache_dir: str | Path | None = None,
              log: Callable[[str], None] = print) -> RelaxedVocabulary:
        import torch

        n_images = int(image_embeddings.shape[0])
        k = _clamp_clusters(self.num_clusters, n_images, self.min_cluster_size)
        if k != self.num_clusters:
            log(f"wordnet_relax: K-means clusters clamped from {self.num_clusters} to {k} "
                f"({n_images} training images, at least {self.min_cluster_size} per cluster)")
        bl_digest = digest(sorted(self.blocklist))
        key = {
            "kind": "relaxed-vocabulary", "v": ALGORITHM_VERSION, "clip": encoder.identity,
            "templates": self.templates, "pool": self.pool_definition(class_names), "blocklist": bl_digest,
            "clusters": k, "top_n": self.top_n, "niter": self.niter, "nredo": self.nredo, "seed": self.seed,
            "images": tensor_digest(image_embeddings.float().cpu()),
        }
        cache_dir = Path(cache_dir) if cache_dir is not None else None
        path = cache_dir / f"vocab-{digest(key)}.pt" if cache_dir is not None else None
        if path is not None:
            cached = load_keyed(path, key)
            if cached is not None:
                log(f"wordnet_relax: relaxed vocabulary of {len(cached['words'])} nouns from cache ({path.name})")
                info = dict(cached["info"], cache_hit=True)
                return RelaxedVocabulary(list(cached["words"]), cached["embeddings"], info)
        words, info = self.noun_pool(class_names)
        if info["pool_capped"]:
            banner = "*" * 100
            log(f"{banner}\nwordnet_relax: NOUN POOL CAPPED to a seeded random sample of {info['pool_size_used']} of "
                f"{info['pool_size_full'] - info['blocked']} nouns (relax.pool_size={self.pool_size}), so that CLIP can "
                f"encode it on this machine; the paper uses the whole list (relax.pool_size=0)\n{banner}")
        log(f"wordnet_relax: noun pool {info['pool_size_used']} nouns (pool={self.pool}, "
            f"{info['blocked']} blocked)")
        noun_emb = self.embed_words(words, encoder, cache_dir, log)
        keep, cinfo = select_by_clusters(image_embeddings, noun_emb, k, self.top_n, self.niter, self.nredo,
                                         self.seed)
        if not keep:  # pragma: no cover - every noun is assigned somewhere
            raise KdkitError("no noun survived the cluster filter")
        selected = [words[i] for i in keep]
        embeddings = noun_emb[torch.tensor(keep, dtype=torch.long)].clone()
        info.update(cinfo)
        info.update({"clusters_requested": self.num_clusters, "top_n": self.top_n, "selected": len(selected),
                     "templates": len(self.templates), "cache_hit": False})
        empty = sum(1 for c in cinfo["nouns_per_cluster"] if c == 0)
        log(f"wordnet_relax: kept {len(selected)} nouns (the top {self.top_n} assigned to each of {k} clusters"
            + (f"; {empty} clusters got none" if empty else "") + "); e.g. " + ", ".join(selected[:8]))
        if path is not None:
            save_keyed(path, key, {"words": selected, "embeddings": embeddings, "info": info})
        return RelaxedVocabulary(selected, embeddings, info)
