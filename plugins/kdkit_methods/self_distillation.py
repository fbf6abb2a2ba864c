"""Be your own teacher (``kdkit train --method byot``): self-distillation to exits of one network.

Zhang, Song, Gao, Chen, Bao & Ma, *Be Your Own Teacher: Improve the Performance of Convolutional Neural
Networks via Self Distillation*, ICCV 2019, arXiv:1905.08094 (reference: luanyunteng/pytorch-be-your-own-teacher).

An exit follows each of the shallower stages named in ``exits`` (default ``layer1``, ``layer2`` of
kdkit's CIFAR ResNets; the deepest stage is ``deepest``, default ``layer3``): a bottleneck that brings
the stage's map to the deepest stage's channels and spatial size, global average pooling and a linear
classifier (:class:`kdkit_methods.pipeline_nets.ExitHead`).  The backbone is not edited: the stages'
outputs come from forward hooks (:class:`kdkit.distill.FeatureTaps`), and the exits are the stage's
extra module — trained and checkpointed with it, kept out of the backbone's exported weights.  The
deployed model is the backbone with its own (deepest) classifier.  One stage, ``student``, minimises
(:func:`kdkit_methods.pipeline_nets.byot_loss`)::

    (1 - alpha) * (CE(z, y) + sum_i CE(z_i, y))
      + alpha * sum_i T^2 * KL(softmax(z / T) || softmax(z_i / T))
      + beta  * sum_i sum_{b,c} [(f_i - f)^2 * ((f_i > 0) | (f > 0))]

``z``, ``f``: the deepest classifier's logits and the deepest stage's pooled feature (detached in the
KL and feature terms); ``z_i``, ``f_i``: exit ``i``'s logits and pooled feature.  Defaults from the
reference's ``train.py``: ``--temperature 3``, ``--alpha 0.1``, ``--beta 1e-6``.

Deviations from the reference:

* the reference's KD term is the cross-entropy ``-sum p log q_i`` to the deepest output; kdkit's KL has
  the same gradient (they differ by the deepest output's entropy, on which no gradient flows);
* the reference's exits follow ``layer1..3`` of a four-stage ResNet-18/50 (the deepest is ``layer4``);
  kdkit's CIFAR ResNets have three stages, so the default exits are ``layer1`` and ``layer2``;
* the middle convolution's kernel and stride ``k`` is the ratio of the exit's spatial size to the
  deepest stage's, rounded down (the reference writes 8, 4, 2 for its ResNet's 32, 16, 8 px stages);
* the reference's exits' pooled features are ``B x C x 1 x 1``; kdkit's are ``B x C`` (same values).
"""
from __future__ import annotations

import kdkit
from kdkit import ConfigError, ConfigKey, lazy_import
from kdkit_methods.pipelines import kd_defaults, log_data, results_table, stage_summary

nets = lazy_import("kdkit_methods.pipeline_nets")

__all__ = ["BYOTMethod"]


class BYOTMethod(kdkit.Method):
    """Be your own teacher: exits after the shallower stages, taught by the deepest classifier."""

    @classmethod
    def default_config(cls) -> dict:
        cfg = kd_defaults()  # kd's data, train and student defaults
        for key in ("teachers", "teacher_train", "distill"):
            del cfg[key]
        cfg["baseline"] = {"enabled": ConfigKey(True, "also train the student without exits (stage baseline)")}
        cfg["exits"] = ConfigKey(["layer1", "layer2"], "module paths of the stages an exit follows, shallow to "
                                                       "deep (kdkit layers MODEL lists them)", type=list, items=str)
        cfg["deepest"] = ConfigKey("layer3", "module path of the deepest stage (the exits' target feature: its "
                                             "pooled output)", type=str)
        cfg["byot"] = {
            "temperature": ConfigKey(3.0, "softmax temperature T of the KL terms (reference --temperature 3)",
                                     range="(0, inf)"),
            "alpha": ConfigKey(0.1, "weight of the KL terms; the CE terms get 1 - alpha (reference --alpha 0.1)",
                               range="[0, 1]"),
            "beta": ConfigKey(1e-6, "weight of the feature terms, a sum over batch and channels "
                                    "(reference --beta 1e-6)", range="[0, inf)"),
        }
        return cfg

    @classmethod
    def check_config(cls, config, registry=None) -> None:
        exits = list(config.exits)
        if not exits:
            raise ConfigError("config key exits: byot needs at least one exit (e.g. exits=[layer1, layer2])")
        if len(set(exits)) != len(exits):
            raise ConfigError(f"config key exits: {exits} names a stage twice; one exit per stage")
        if config.deepest in exits:
            raise ConfigError(f"config key exits: {config.deepest!r} is the deepest stage (deepest); the exits "
                              "follow shallower stages")

    @classmethod
    def stages(cls, config) -> list[str]:
        return (["baseline"] if config.baseline.enabled else []) + ["student"]

    @staticmethod
    def build(ctx, num_classes: int, sample):
        """The student and its exits (:class:`~kdkit_methods.pipeline_nets.SelfDistilled`); the heads are
        shaped by one forward pass of ``sample`` and initialised from their own seed."""
        cfg = ctx.config
        student = ctx.build_model("students", cfg.student, num_classes, seed_tag="student")
        net = nets.SelfDistilled(student, cfg.exits, cfg.deepest)  # a wrong path: one line, before training
        # on the CPU, where the model is built: the stage (or ctx.load_best) moves both to the device
        net.build_heads(sample, num_classes, kdkit.derive_seed(ctx.seed, "init", "byot", "exits"))
        return net

    @staticmethod
    def _sample(dataset):
        """One input of ``dataset`` as a batch of one (the heads' shapes come from it)."""
        item = dataset[0]
        x = item["image"] if isinstance(item, dict) else item[0]
        return x.unsqueeze(0)

    def run(self, ctx) -> dict:
        cfg = ctx.config
        train, val, test, classes = ctx.classification_data()
        num_classes = len(classes)
        log_data(ctx, train, val, test, num_classes)
        net = self.build(ctx, num_classes, self._sample(train))

        summary: dict = {"method": cfg.method}
        if cfg.baseline.enabled:
            baseline = ctx.build_model("students", cfg.student, num_classes, seed_tag="student")
            summary["baseline"] = stage_summary(ctx.fit(kdkit.Stage(name="baseline", model=baseline, train_data=train,
                                                                    val_data=val, test_data=test)))
        b = cfg.byot
        result = ctx.fit(kdkit.Stage(name="student", model=net.backbone, train_data=train, val_data=val,
                                     test_data=test, step_fn=net.step(float(b.temperature), float(b.alpha),
                                                                      float(b.beta)),
                                     eval_fn=net.evaluate, taps=[net.taps], extra_modules={"exits": net.heads}))
        summary["student"] = {**stage_summary(result), "name": cfg.student.name}
        summary["exits"] = [{"after": path, "top1": result.test_metrics.get(f"exit.{path}.top1"),
                             "val_top1": result.best_metrics.get(f"exit.{path}.top1")} for path in net.exits]
        summary["byot"] = {"temperature": float(b.temperature), "alpha": float(b.alpha), "beta": float(b.beta),
                           "deepest": net.deepest}
        summary["selection"] = {"select_on": cfg.checkpoint.select_on,
                                "metric": "top1 of the deployed (deepest) classifier"}
        if ctx.is_main:
            print(self.results_table(summary), flush=True)
        return summary

    @staticmethod
    def results_table(summary: dict) -> str:
        rows = []
        if "baseline" in summary:
            rows.append(("baseline (no exits)", summary["baseline"]["top1"]))
        rows += [(f"exit after {e['after']}", e["top1"]) for e in summary["exits"]]
        rows.append(("student (byot, deepest classifier)", summary["student"]["top1"]))
        return results_table(rows, summary["selection"]["select_on"])

    def evaluate(self, ctx) -> dict:
        """``kdkit eval``: the deployed classifier and every exit of the best epoch on the test split."""
        test = ctx.build_dataset(None, "test")
        net = self.build(ctx, len(test.classes), self._sample(test))
        ctx.load_best("student", net.backbone, extra_modules={"exits": net.heads})
        net.heads.to(ctx.device).eval()
        out = {"student": ctx.evaluate(net.backbone, test, eval_fn=net.evaluate)}
        if ctx.config.baseline.enabled:
            baseline = ctx.build_model("students", ctx.config.student, len(test.classes), seed_tag="student")
            ctx.load_best("baseline", baseline)
            out["baseline"] = ctx.evaluate(baseline, test)
        return out
