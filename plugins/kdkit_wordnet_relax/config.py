"""The declared config of the ``wordnet_relax`` method (``kdkit train --method wordnet_relax --help-config``).

This is the OFFLINE default: it runs in a few minutes on 2 CPU cores with no downloads, so it uses
a tiny randomly initialised CLIP (``kdkit-tiny``), a capped noun pool (1000 of WordNet's ~117k
nouns) and small CIFAR-style ResNets.  Its numbers check the pipeline; they are NOT the paper's.
The paper recipe is ``configs/wordnet_relax_cifar100_paper.yaml``.  Importing this module is cheap.
"""
from __future__ import annotations

from kdkit import ConfigKey, base_config, train_section
from kdkit.distill import distill_section

LAMBDA_PRESETS = {"seed": (0.1, 0.01), "authors": (0.2, 0.005)}
TX_TEXT = ("retrieved", "protocol")
TX_CLIP = ("cached", "online")
EMBEDDING_MODES = ("learnable", "fixed", "noise")
POOLS = ("all", "relations", "file")
RELATIONS = ("hypernyms", "hyponyms", "siblings")


def default_config() -> dict:
    cfg = base_config()
    cfg["data"].update({
        # real images (Debian's dataset-fashion-mnist, classes named by WordNet nouns): a class-balanced
        # 2,000-image subset of the training split, the whole test split; data.name=shapes: the embedded set
        "name": "fashion_mnist",
        "train_per_class": 200,
        "test_per_class": None,
        "augment": ConfigKey("weak", "augmentation of the student's (and the no-KD baseline's) training data"),
    })
    cfg["clip"] = {
        "model": ConfigKey("kdkit-tiny", "open_clip architecture (paper: ViT-B-32), or kdkit-tiny / kdkit-micro"),
        "pretrained": ConfigKey(None, "null: random init (a loud warning); an open_clip tag or a local checkpoint "
                                      "file", type=str),
        "model_config": ConfigKey(None, "a custom open_clip model config (embed_dim, vision_cfg, text_cfg)",
                                  type=dict),
        "seed": ConfigKey(0, "seed of CLIP's random initialisation", range="[0, inf)"),
        "image_size": ConfigKey(None, "force another CLIP input resolution (null: the model's)", type=int,
                                range="[1, inf)"),
        "batch_size": ConfigKey(256, "CLIP encoding batch size", range="[1, inf)"),
        "device": ConfigKey(None, "device of CLIP encoding (null: the run's device)", type=str,
                            pattern=r"cpu|cuda(:\d+)?"),
    }
    cfg["relax"] = {
        "relaxer": ConfigKey("wordnet", "text relaxer: a name of the text_relaxers registry"),
        "ratio": ConfigKey(1.0, "share of training samples with relaxed text (0: exact class names = label "
                                "leakage)", range="[0, 1]"),
        "tau": ConfigKey(0.005, "temperature of the soft retrieval softmax(v @ N.T / tau) @ N", range="(0, inf)"),
        "sweep": ConfigKey([], "ratios to train T_x and the student at, once each (writes the paper's Figure 2), "
                               "e.g. [0, 0.5, 1]", items=float, range="[0, 1]"),
        "pool": ConfigKey("all", "noun pool: every WordNet noun, the classes' relations, or a file", choices=POOLS),
        "pool_file": ConfigKey(None, "pool=file: a file with one noun per line", type=str, file=True),
        "pool_size": ConfigKey(1000, "OFFLINE CAP: a seeded random sample of the pool (0: the whole pool, as the "
                                     "paper)", range="[0, inf)"),
        "relations": ConfigKey(list(RELATIONS), "pool=relations: which relations of each class", items=str,
                               choices=RELATIONS),
        "senses": ConfigKey({}, "pool=relations: class -> synset, e.g. {fox: fox.n.01}", type=dict),
        "exclude_class_names": ConfigKey(False, "drop the class names themselves from the pool"),
        "blocklist": ConfigKey(True, "drop the packaged list of offensive lemmas"),
        "blocklist_extra": ConfigKey([], "more lemmas to drop, or files with one lemma per line", items=str),
        "templates": ConfigKey(None, "prompt templates with {} (null: the authors' 7)", type=list, items=str),
        "num_clusters": ConfigKey(150, "K of the spherical K-means (clamped to n_images // min_cluster_size)",
                                  range="[1, inf)"),
        "top_n": ConfigKey(5, "nouns kept per cluster", range="[1, inf)"),
        "min_cluster_size": ConfigKey(39, "smallest cluster the K-means may produce", range="[1, inf)"),
        "niter": ConfigKey(300, "K-means iterations", range="[1, inf)"),
        "nredo": ConfigKey(10, "K-means restarts (the best is kept)", range="[1, inf)"),
        "cache": ConfigKey(True, "cache CLIP embeddings and the relaxed vocabulary on disk"),
        "cache_dir": ConfigKey(None, "null: $KDKIT_CACHE_DIR/wordnet_relax (or ~/.cache/kdkit/wordnet_relax)",
                               type=str),
    }
    cfg["tx"] = {  # the multimodal teacher T_x on [CLIP image emb || text emb]
        "backbone": ConfigKey("mlp", "mlp, or any registered teacher taking in_channels (resnet50: the authors')"),
        "hidden": ConfigKey(512, "hidden width of the MLP", range="[1, inf)"),
        "dropout": ConfigKey(0.1, "dropout of the MLP", range="[0, 1)"),
        "input_norm": ConfigKey(True, "BatchNorm on the MLP's input (standardises unit-norm CLIP embeddings)"),
        "backbone_options": ConfigKey({}, "options of a registry backbone, e.g. {pretrained: resnet50.pth}",
                                      type=dict),
        "embedding": ConfigKey("learnable", "the relaxed nouns' text embeddings: trained, frozen, or noise",
                               choices=EMBEDDING_MODES),
        "preset": ConfigKey("seed", "seed: lambda_hier 0.1, lambda_cosreg 0.01 | authors: 0.2, 0.005",
                            choices=tuple(LAMBDA_PRESETS)),
        "lambda_hier": ConfigKey(None, "weight of the hierarchy term (null: from the preset)", type=float,
                                 range="[0, inf)"),
        "lambda_cosreg": ConfigKey(None, "weight of the cosine regulariser (null: from the preset)", type=float,
                                   range="[0, inf)"),
        "noun_weight_decay": ConfigKey(0.0001, "weight decay of the learnable noun embeddings", range="[0, inf)"),
        "noun_lr": ConfigKey(None, "learning rate of the noun embeddings (null: T_x's)", type=float,
                             range="(0, inf)"),
        "train": train_section(epochs=30, batch_size=128, lr=0.05, optimizer="sgd", momentum=0.9,
                               weight_decay=0.0005, scheduler="cosine"),
    }
    # the unimodal image teachers T_m, one per augmentation: larger than the student and trained longer (the
    # paper's T_m are ImageNet-pretrained ResNet-50s teaching a ResNet-18 from scratch), so that they can teach:
    # resnet20 (0.27M parameters) for 15 epochs against a resnet8 student at width 8 (0.02M) for 10
    cfg["teachers"] = [
        {"name": ConfigKey("resnet20", "T_m: a name of the teachers registry"),
         "augment": ConfigKey("strong", "augmentation of this teacher's training data"),
         "train": ConfigKey(True, "train the teacher (false: load its `pretrained` weights file)"),
         "pretrained": ConfigKey(None, "weights file of the teacher", type=str, file=True)},
        {"name": "resnet20", "augment": "weak", "train": True, "pretrained": None},
    ]
    cfg["teacher_train"] = train_section(epochs=15, batch_size=64, lr=0.05, weight_decay=0.0005, scheduler="cosine")
    cfg["student"] = {"name": ConfigKey("resnet8", "student: a name of the students registry"), "width": 8}
    cfg["train"] = train_section(epochs=10, batch_size=64, lr=0.05, weight_decay=0.0005, scheduler="cosine")
    cfg["distill"] = distill_section(alpha=0.6, temperature=3.0)
    del cfg["distill"]["teacher_cache"]  # T_m logits are cached whenever their input is deterministic
    cfg["distill"].update({
        "use_multimodal": ConfigKey(True, "distil from T_x too (false: T_m only, the 'T_m -> S' column)"),
        "tx_text": ConfigKey("retrieved", "T_x's text at distillation: retrieved (label-free) | protocol (exact "
                                          "names for un-relaxed samples)", choices=TX_TEXT),
        "tx_clip": ConfigKey("cached", "T_x's image embedding: cached (un-augmented image) | online (the "
                                       "student's augmented batch)", choices=TX_CLIP),
    })
    cfg["baseline"] = {"enabled": ConfigKey(True, "also train the student without distillation (stage baseline)")}
    return cfg
