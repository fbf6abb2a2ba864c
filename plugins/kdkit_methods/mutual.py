"""Deep mutual learning (``kdkit train --method dml``).

Zhang, Xiang, Hospedales & Lu, *Deep Mutual Learning*, CVPR 2018, arXiv:1706.00384.  A cohort of
``K`` peers (default 2, the paper's main setting) is trained together from scratch — there is no
pretrained teacher.  Peer ``k`` minimises (the paper's Eq. 10)::

    L_k = CE(z_k, y) + 1/(K-1) * sum_{l != k} T^2 * KL(p_l || p_k),   p = softmax(z / T),  T = 1

with the other peers' predictions ``p_l`` held fixed (detached), as in the paper's update of one
network given the others' predictions.  One stage, ``cohort``, trains an ``nn.Module`` holding the
peers with a step that sums the ``L_k`` (:func:`kdkit_methods.pipeline_nets.mutual_loss`).

Deviations from the reference (YingZhangDUT/Deep-Mutual-Learning, ``train_models.py``):

* the reference *sums* the KL terms over the other peers (``net_loss += kl_loss``); the paper and
  kdkit average them (``1/(K-1)``) — the same for the default ``K = 2``;
* the reference runs one training op per network, one after another, each on its own batch (its
  predictions of the others come from their current weights); kdkit updates every peer from one
  forward pass of the cohort on the same batch — the same objective per peer, with the others'
  predictions from before this step's update;
* the reference's KL is computed as ``p_l * log(1e-8 + p_l / (p_k + 1e-8))``; kdkit uses
  ``log_softmax`` (no epsilon);
* ``T`` is configurable (``dml.temperature``, default 1 as in the paper and the reference); other
  values scale the KL by ``T^2`` as Hinton's KD does (kdkit's choice: DML has no temperature).
"""
from __future__ import annotations

from typing import ClassVar

import kdkit
from kdkit import ConfigError, ConfigKey, lazy_import
from kdkit_methods.pipelines import kd_defaults, log_data, results_table, stage_summary

nets = lazy_import("kdkit_methods.pipeline_nets")

__all__ = ["DMLMethod"]


def _peer(default: str = "resnet8", width: int = 8) -> dict:
    return {"name": ConfigKey(default, "a peer: a name of the students registry"), "width": width}


class DMLMethod(kdkit.Method):
    """Deep mutual learning: peers trained together, each taught by the others (see the module docs)."""

    component_sections: ClassVar[dict[str, str]] = {"peers[]": "students"}

    @classmethod
    def default_config(cls) -> dict:
        cfg = kd_defaults()  # kd's data and train defaults: the same setting as every other method
        for key in ("teachers", "teacher_train", "student", "distill", "baseline"):
            del cfg[key]
        cfg["peers"] = [_peer(), _peer()]
        cfg["dml"] = {
            "temperature": ConfigKey(1.0, "softmax temperature T of the KL terms (1: the paper's and the "
                                          "reference's; other values scale KL by T^2)", range="(0, inf)"),
        }
        return cfg

    @classmethod
    def check_config(cls, config, registry=None) -> None:
        if len(config.peers) < 2:
            raise ConfigError(f"config key peers: deep mutual learning needs at least two peers, got "
                              f"{len(config.peers)} (e.g. peers=[{{name: resnet8}}, {{name: resnet8}}])")

    @classmethod
    def stages(cls, config) -> list[str]:
        return ["cohort"]

    @staticmethod
    def build_cohort(ctx, num_classes: int):
        """The peers, each initialised from its own seed (``seed_tag="peer.<k>"``), as one module."""
        return nets.Cohort([ctx.build_model("students", peer, num_classes, seed_tag=f"peer.{k}")
                            for k, peer in enumerate(ctx.config.peers)])

    def run(self, ctx) -> dict:
        cfg = ctx.config
        train, val, test, classes = ctx.classification_data()
        num_classes = len(classes)
        log_data(ctx, train, val, test, num_classes)
        cohort = self.build_cohort(ctx, num_classes)
        # One optimiser over every peer's parameters is the paper's one optimiser per network: SGD's
        # momentum and weight decay (and Adam's moments) are per parameter, and each parameter's gradient
        # comes from its own peer's L_k alone (the others' predictions are detached in mutual_loss).  Only
        # train.grad_clip, a norm over all parameters, would couple the peers.
        result = ctx.fit(kdkit.Stage(name="cohort", model=cohort, train_data=train, val_data=val, test_data=test,
                                     step_fn=nets.MutualStep(cfg.dml.temperature), eval_fn=nets.cohort_eval))
        peers = []
        for k, peer in enumerate(cfg.peers):
            peers.append({"name": peer.name, "top1": result.test_metrics.get(f"peer.{k}.top1"),
                          "val_top1": result.best_metrics.get(f"peer.{k}.top1")})
        summary = {"method": cfg.method, "cohort": stage_summary(result), "peers": peers,
                   "dml": {"temperature": float(cfg.dml.temperature), "peers": len(peers)},
                   "selection": {"select_on": cfg.checkpoint.select_on,
                                 "metric": "mean top-1 of the peers (one best epoch for the cohort)"}}
        if ctx.is_main:
            print(self.results_table(summary), flush=True)
        return summary

    @staticmethod
    def results_table(summary: dict) -> str:
        rows = [(f"peer {k} ({p['name']}, dml)", p["top1"]) for k, p in enumerate(summary["peers"])]
        rows.append(("cohort mean", summary["cohort"]["top1"]))
        return results_table(rows, summary["selection"]["select_on"])

    def stage_model(self, ctx, stage: str, num_classes: int):
        """``kdkit export``: the ``cohort`` stage's module (every peer, ``peers.<k>.`` prefixes), best epoch."""
        if stage != "cohort":
            raise kdkit.KdkitError(f"--stage {stage}: dml trains one stage, cohort")
        cohort = self.build_cohort(ctx, num_classes)
        ctx.load_best(stage, cohort)
        return cohort.eval()

    def evaluate(self, ctx) -> dict:
        """``kdkit eval``: every peer of the best epoch's cohort on the test split."""
        test = ctx.build_dataset(None, "test")
        cohort = self.build_cohort(ctx, len(test.classes))
        ctx.load_best("cohort", cohort)
        metrics = ctx.evaluate(cohort, test, eval_fn=nets.cohort_eval)
        return {"cohort": {"top1": metrics["top1"], "loss": metrics["loss"]},
                "peers": [{"name": p.name, "top1": metrics[f"peer.{k}.top1"], "loss": metrics[f"peer.{k}.loss"]}
                          for k, p in enumerate(ctx.config.peers)]}
