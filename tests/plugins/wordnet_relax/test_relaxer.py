"""The ``wordnet`` text relaxer: pools, senses, the cluster filter, the cache and its key."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from wr_helpers import needs_debian_wordnet

from kdkit.errors import ConfigError
from kdkit_wordnet_relax.relaxer import TEMPLATES, WordNetRelaxer, relation_lemmas, select_by_clusters


class CountingEncoder:
    """Wraps a ClipEncoder and counts the nouns it encodes."""

    def __init__(self, enc):
        self.enc = enc
        self.encoded: list[str] = []

    def __getattr__(self, name):
        return getattr(self.enc, name)

    def encode_words(self, words, templates, progress=None):
        self.encoded += list(words)
        return self.enc.encode_words(words, templates, progress=progress)


def test_templates_are_the_authors_seven():
    assert len(TEMPLATES) == 7
    assert TEMPLATES[0] == "itap of a {}." and TEMPLATES[-1] == "a photo of the small {}."
    assert WordNetRelaxer().templates == list(TEMPLATES)


def _images(micro_clip, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return micro_clip.encode_images(torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8))


def test_select_by_clusters_keeps_top_nouns_per_cluster():
    torch.manual_seed(0)
    d = 8
    centres = F.normalize(torch.eye(d)[:3], dim=-1)
    images = F.normalize(centres.repeat_interleave(20, 0) + 0.05 * torch.randn(60, d), dim=-1)
    # nouns 0-3 near centre 0, 4-7 near centre 1, 8-11 near centre 2 (smaller index = closer)
    away = torch.eye(d)[7]
    nouns = torch.cat([F.normalize(c + torch.tensor([0.1, 0.3, 0.6, 0.9])[:, None] * away, dim=-1) for c in centres])
    keep, info = select_by_clusters(images, nouns, num_clusters=3, top_n=2, niter=20, nredo=2, seed=0)
    assert info["clusters"] == 3 and sorted(info["cluster_sizes"]) == [20, 20, 20]
    assert sorted(keep) == [0, 1, 4, 5, 8, 9]


def test_pool_file_cap_and_clamp(pool_file, micro_clip, tmp_path):
    logs = []
    relaxer = WordNetRelaxer(pool="file", pool_file=str(pool_file), pool_size=30, num_clusters=150,
                             min_cluster_size=10, top_n=2, niter=5, nredo=1)
    vocab = relaxer.build(["circle", "square"], _images(micro_clip, 40), micro_clip, cache_dir=tmp_path,
                          log=logs.append)
    assert vocab.info["pool_capped"] is True and vocab.info["pool_size_used"] == 30
    assert vocab.info["clusters"] == 4  # 40 images // 10
    assert any("clamped from 150 to 4" in m for m in logs)
    assert any("NOUN POOL CAPPED" in m for m in logs)
    assert 1 <= len(vocab.words) <= 8
    assert vocab.embeddings.shape == (len(vocab.words), micro_clip.embed_dim)
    # the cap is a seeded sample: same seed, same pool; other seed, other pool
    again = WordNetRelaxer(pool="file", pool_file=str(pool_file), pool_size=30).noun_pool(["circle"])[0]
    other = WordNetRelaxer(pool="file", pool_file=str(pool_file), pool_size=30, seed=1).noun_pool(["circle"])[0]
    assert again == relaxer.noun_pool(["circle"])[0] and other != again


def test_single_image_still_gets_one_cluster(pool_file, micro_clip):
    relaxer = WordNetRelaxer(pool="file", pool_file=str(pool_file), niter=2, nredo=1)
    vocab = relaxer.build(["circle"], _images(micro_clip, 1), micro_clip, cache_dir=None, log=lambda m: None)
    assert vocab.info["clusters"] == 1 and len(vocab.words) == 5


def test_cache_hits_and_invalidation(pool_file, micro_clip, tmp_path):
    images = _images(micro_clip, 30)
    base = dict(pool="file", pool_file=str(pool_file), num_clusters=3, top_n=2, niter=5, nredo=1,
                min_cluster_size=5)
    enc = CountingEncoder(micro_clip)
    first = WordNetRelaxer(**base).build(["circle"], images, enc, cache_dir=tmp_path, log=lambda m: None)
    assert first.info["cache_hit"] is False and len(enc.encoded) > 0
    enc.encoded.clear()
    second = WordNetRelaxer(**base).build(["circle"], images, enc, cache_dir=tmp_path, log=lambda m: None)
    assert second.info["cache_hit"] is True and enc.encoded == []
    assert second.words == first.words and torch.equal(second.embeddings, first.embeddings)

    changes = {
        "top_n": dict(top_n=3), "clusters": dict(num_clusters=2), "seed": dict(seed=5), "niter": dict(niter=6),
        "nredo": dict(nredo=2), "blocklist": dict(blocklist_extra=["fox"]), "pool_size": dict(pool_size=20),
        "templates": dict(templates=["a {}."]),
    }
    for what, change in changes.items():
        enc.encoded.clear()
        vocab = WordNetRelaxer(**{**base, **change}).build(["circle"], images, enc, cache_dir=tmp_path,
                                                            log=lambda m: None)
        assert vocab.info["cache_hit"] is False, what
        # noun embeddings are cached per word: only a template change re-encodes the pool
        assert (len(enc.encoded) > 0) == (what == "templates"), what
    # other images (a changed dataset) or another CLIP miss the vocabulary cache too
    vocab = WordNetRelaxer(**base).build(["circle"], _images(micro_clip, 30, seed=1), micro_clip,
                                         cache_dir=tmp_path, log=lambda m: None)
    assert vocab.info["cache_hit"] is False
    import warnings

    from kdkit import build_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other_clip = CountingEncoder(build_clip({"model": "kdkit-micro", "seed": 7}))
    vocab = WordNetRelaxer(**base).build(["circle"], images, other_clip, cache_dir=tmp_path, log=lambda m: None)
    assert vocab.info["cache_hit"] is False and len(other_clip.encoded) > 0
    # a changed pool file changes the key as well
    pool_file.write_text(pool_file.read_text() + "zebra\n")
    vocab = WordNetRelaxer(**base).build(["circle"], images, micro_clip, cache_dir=tmp_path, log=lambda m: None)
    assert vocab.info["cache_hit"] is False


def test_corrupt_cache_file_is_recomputed(pool_file, micro_clip, tmp_path):
    images = _images(micro_clip, 20)
    kw = dict(pool="file", pool_file=str(pool_file), num_clusters=2, niter=3, nredo=1, min_cluster_size=5)
    WordNetRelaxer(**kw).build(["circle"], images, micro_clip, cache_dir=tmp_path, log=lambda m: None)
    for f in tmp_path.glob("vocab-*.pt"):
        f.write_bytes(b"garbage")
    vocab = WordNetRelaxer(**kw).build(["circle"], images, micro_clip, cache_dir=tmp_path, log=lambda m: None)
    assert vocab.info["cache_hit"] is False and vocab.words


def test_option_validation(tmp_path):
    with pytest.raises(ConfigError, match="relax.pool"):
        WordNetRelaxer(pool="everything")
    with pytest.raises(ConfigError, match="pool_file"):
        WordNetRelaxer(pool="file")
    with pytest.raises(ConfigError, match="template"):
        WordNetRelaxer(templates=["no placeholder"])
    with pytest.raises(ConfigError, match="unknown option"):
        WordNetRelaxer(colour="blue")


@needs_debian_wordnet
def test_relations_pool_follows_the_word_sense():
    from kdkit_wordnet_relax.wordnet_data import get_wordnet

    wn = get_wordnet()
    animal, details = relation_lemmas(wn, ["fox"], senses={"fox": "fox.n.01"})
    assert details["fox"]["synset"] == "fox.n.01"
    assert {"canine", "canid"} <= set(animal)  # hypernym
    assert "red fox" in animal  # hyponym
    assert {"wolf", "jackal", "dog"} <= set(animal)  # siblings: the other canines
    person, _ = relation_lemmas(wn, ["fox"], senses={"fox": "dodger.n.01"})
    assert person != animal and "canine" not in person
    only_up, _ = relation_lemmas(wn, ["fox"], relations=["hypernyms"], senses={"fox": "fox.n.01"})
    assert set(only_up) <= set(animal) and "red fox" not in only_up
    with pytest.raises(ConfigError, match="not a WordNet synset"):
        relation_lemmas(wn, ["fox"], senses={"fox": "fox.n.99"})
    with pytest.raises(ConfigError, match="relax.relations"):
        relation_lemmas(wn, ["fox"], relations=["meronyms"])
    words, details = relation_lemmas(wn, ["sea cucumber", "xyzzyplugh"])
    assert details["sea cucumber"]["synset"] == "sea_cucumber.n.01" and details["xyzzyplugh"]["synset"] is None


@needs_debian_wordnet
def test_whole_noun_list_pool():
    relaxer = WordNetRelaxer(pool="all", pool_size=None)
    words, info = relaxer.noun_pool(["circle"])
    assert info["pool_size_full"] > 110000 and info["pool_capped"] is False
    assert "sea cucumber" in words and "sea_cucumber" not in words
    assert "motherfucker" not in words and info["blocked"] > 50
    capped, cinfo = WordNetRelaxer(pool="all", pool_size=500).noun_pool(["circle"])
    assert len(capped) == 500 and cinfo["pool_capped"] is True
    excluded, einfo = WordNetRelaxer(pool="all", exclude_class_names=True).noun_pool(["circle", "sea cucumber"])
    assert "circle" not in excluded and "sea cucumber" not in excluded and einfo["excluded_class_names"] == 2
