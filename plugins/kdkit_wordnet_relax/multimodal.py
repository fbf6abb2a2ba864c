"""T_x, ``wordnet_relax``'s multimodal teacher: a classifier of ``[CLIP image embedding || text embedding]``
whose text is the soft retrieval over the relaxed nouns for a share ``relax.ratio`` of the training
samples and the exact class name for the others (label leakage).

Here: which samples get relaxed text (:func:`relax_mask`), the loss weights (:func:`lambdas`), the
model (:func:`build_tx_model`), its training stage (:func:`train_tx`), its logit table over the
training samples (:func:`tx_table`) and T_x as the student stage sees it (:func:`tx_teacher`, a
:class:`kdkit.distill.LogitsTeacher`).  :class:`~kdkit_wordnet_relax.method.WordNetRelaxMethod` calls
them through its methods of the same names, its seams.  Importing this module is cheap (torch loads
when a function runs).
"""
from __future__ import annotations

from kdkit.distill import LogitsTeacher

from kdkit_wordnet_relax.config import LAMBDA_PRESETS
from kdkit_wordnet_relax.embeddings import targets

__all__ = ["relax_mask", "lambdas", "build_tx_model", "train_tx", "tx_table", "tx_teacher"]


def relax_mask(n: int, ratio: float, seed: int, tag: str):
    """Boolean mask of the ``round(ratio * n)`` samples that get relaxed text (seeded choice).

    The permutation depends only on ``(seed, tag, n)``, so the relaxed sets of increasing
    ratios are nested.
    """
    import torch
    from kdkit import derive_seed

    k = int(round(float(ratio) * n))
    g = torch.Generator().manual_seed(derive_seed(seed, "relax-mask", tag, n) % (2 ** 63))
    perm = torch.randperm(n, generator=g)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[perm[:k]] = True
    return mask


def lambdas(tx: dict) -> tuple[float, float]:
    """``(lambda_hier, lambda_cosreg)``: ``tx.preset``'s, each replaced by its own key when that is set."""
    lh, lc = LAMBDA_PRESETS[tx.preset]
    if tx.lambda_hier is not None:
        lh = float(tx.lambda_hier)
    if tx.lambda_cosreg is not None:
        lc = float(tx.lambda_cosreg)
    return lh, lc


def build_tx_model(ctx, embed_dim: int, num_classes: int, stage_name: str):
    """T_x's network on ``2 * embed_dim`` inputs: the MLP (``tx.backbone: mlp``) or a registered teacher."""
    from kdkit import derive_seed, seed_everything

    from kdkit_wordnet_relax.models import MLPHead, MultimodalTeacher

    tx = ctx.config.tx
    if tx.backbone == "mlp":
        seed_everything(derive_seed(ctx.seed, "init", "multimodal", stage_name))
        head = MLPHead(2 * embed_dim, num_classes, int(tx.hidden), float(tx.dropout),
                       input_norm=bool(tx.input_norm))
        return MultimodalTeacher(head, spatial=False)
    section = {**tx.backbone_options, "name": tx.backbone, "in_channels": 2 * embed_dim}
    backbone = ctx.build_model("teachers", section, num_classes, seed_tag=stage_name)
    return MultimodalTeacher(backbone, spatial=True)


def train_tx(ctx, ratio, stage_name, vocab, class_emb, emb, data, num_classes, build_model=build_tx_model,
             weights: tuple[float, float] | None = None):
    """Train T_x at ``ratio`` as the stage ``stage_name``; returns ``(model, bank, summary)`` (both frozen).

    :param vocab: the relaxed vocabulary (its nouns' ``embeddings``); ``class_emb`` the class names' text
        embeddings; ``emb`` the CLIP image embeddings (:class:`~kdkit_wordnet_relax.embeddings.Embeddings`);
        ``data`` the ``(train, val, test)`` splits.
    :param build_model: ``build_model(ctx, embed_dim, num_classes, stage_name)``, T_x's network.
    :param weights: ``(lambda_hier, lambda_cosreg)`` (default: :func:`lambdas` of ``tx``).
    """
    import torch
    import torch.nn.functional as F
    from kdkit import Stage, freeze, to_device
    from torch.utils.data import TensorDataset

    from kdkit_wordnet_relax.models import NounBank

    cfg = ctx.config
    tx, relax = cfg.tx, cfg.relax
    tau = float(relax.tau)
    lh, lc = weights if weights is not None else lambdas(tx)
    train, val, test = data
    seed = ctx.seed

    def tensors(ds, tag):
        if ds is None:
            return None
        v = emb.of(ds)
        y = targets(ds)
        return TensorDataset(v, y, relax_mask(len(y), ratio, seed, tag))

    train_t, val_t, test_t = tensors(train, "train"), tensors(val, "val"), tensors(test, "test")
    model = build_model(ctx, class_emb.shape[1], num_classes, stage_name)
    bank = NounBank(vocab.embeddings, class_emb, mode=tx.embedding, seed=seed)

    def step_fn(m, batch):
        v, y, mask = batch
        t = bank.text_for(v, y, mask, tau)
        logits = m(v, t)
        ce = F.cross_entropy(logits, y)
        hier = (1.0 - F.cosine_similarity(bank.class_emb[y], t, dim=-1)).mean()
        logs = {"ce": ce.detach(), "hier": hier.detach()}
        loss = ce
        if bank.learnable:
            reg = bank.cosreg()
            loss = ce + lh * hier + lc * reg
            logs["cosreg"] = reg.detach()
        return loss, logs

    def eval_fn(m, loader):
        device = bank.class_emb.device
        n = correct = correct_rel = correct_exact = 0
        loss_sum = ent = ent_rel = 0.0
        for batch in loader:
            v, y, mask = to_device(batch, device)
            proto = m(v, bank.text_for(v, y, mask, tau)).float()
            rel = m(v, bank.retrieve(v, tau)).float()
            exact = m(v, bank.class_emb[y]).float()
            loss_sum += F.cross_entropy(proto, y, reduction="sum").item()
            lp, lr_ = torch.log_softmax(proto, -1), torch.log_softmax(rel, -1)
            ent += float(-(lp.exp() * lp).sum().item())
            ent_rel += float(-(lr_.exp() * lr_).sum().item())
            correct += (proto.argmax(1) == y).sum().item()
            correct_rel += (rel.argmax(1) == y).sum().item()
            correct_exact += (exact.argmax(1) == y).sum().item()
            n += y.numel()
        n = max(n, 1)
        return {"top1": 100.0 * correct / n, "top1_relaxed": 100.0 * correct_rel / n,
                "top1_exact": 100.0 * correct_exact / n, "loss": loss_sum / n, "entropy": ent / n,
                "entropy_relaxed": ent_rel / n}

    def param_groups(m, extra):
        groups = [{"params": [p for p in m.parameters() if p.requires_grad]}]
        if bank.learnable:
            g = {"params": [bank.nouns], "weight_decay": float(tx.noun_weight_decay)}
            if tx.noun_lr is not None:
                g["lr"] = float(tx.noun_lr)
            groups.append(g)
        return groups

    ctx.log(f"wordnet_relax: T_x ({tx.backbone}, embedding {tx.embedding}) at relax.ratio={ratio:g}: "
            f"{int(train_t.tensors[2].sum())}/{len(train_t)} training samples get relaxed text; "
            f"lambda_hier={lh:g}, lambda_cosreg={lc:g}")
    res = ctx.fit(Stage(name=stage_name, model=model, train_data=train_t, val_data=val_t, test_data=test_t,
                        step_fn=step_fn, eval_fn=eval_fn, optimizer=tx.train,
                        extra_modules={"nouns": bank}, param_groups=param_groups,
                        after_step_fn=lambda trainer, step: bank.renormalize()))
    freeze(model)
    freeze(bank)
    tm = res.test_metrics
    summary = {"top1": tm.get("top1"), "top1_relaxed": tm.get("top1_relaxed"), "top1_exact": tm.get("top1_exact"),
               "entropy_test": tm.get("entropy"), "val_top1": res.best_metrics.get("top1"),
               "val_top1_relaxed": res.best_metrics.get("top1_relaxed"),
               "best_epoch": res.best_epoch, "backbone": tx.backbone, "embedding": tx.embedding,
               "lambda_hier": lh, "lambda_cosreg": lc, "ratio": ratio, "stage": stage_name,
               "relaxed_train_samples": int(train_t.tensors[2].sum()), "train_samples": len(train_t)}
    if bank.learnable:
        with torch.no_grad():
            drift = (1.0 - F.cosine_similarity(bank.nouns.float(), bank.anchor, dim=-1)).mean().item()
        summary["noun_drift"] = drift
    return model, bank, summary


def tx_table(ctx, model, bank, v_train, y_train, mask_train):
    """T_x logits for every training sample, with the text used at distillation."""
    import torch

    tau = float(ctx.config.relax.tau)
    protocol = ctx.config.distill.tx_text == "protocol"
    out = []
    device = bank.class_emb.device
    with torch.no_grad():
        for s in range(0, len(v_train), 1024):
            v = v_train[s:s + 1024].to(device)
            y = y_train[s:s + 1024].to(device)
            m = mask_train[s:s + 1024].to(device)
            t = bank.text_for(v, y, m, tau) if protocol else bank.retrieve(v, tau)
            out.append(model(v, t).float())
    return torch.cat(out)


def tx_teacher(ctx, tx_parts, encoder, to_pixels) -> LogitsTeacher:
    """T_x as the student stage sees it: on a training batch, its row of the logit table (``tx_clip:
    cached``) or CLIP run on the batch's images (``online``), with the text of ``distill.tx_text``;
    on the held-out split, the validation images' CLIP embeddings with retrieved text."""
    dist = ctx.config.distill
    tau = float(ctx.config.relax.tau)
    online = dist.tx_clip == "online"
    protocol = dist.tx_text == "protocol"
    tx_model, bank, table, mask_train, v_val = tx_parts
    table = table.to(ctx.device)
    mask_train = mask_train.to(ctx.device)

    def logits(x, y, idx):
        if not online:
            return table[idx]
        v = encoder.encode_images(to_pixels(x)).to(bank.class_emb.device)
        t = bank.text_for(v, y, mask_train[idx], tau) if protocol else bank.retrieve(v, tau)
        return tx_model(v, t).float()

    def validation_logits(x, y, start):  # the validation images' CLIP embeddings, in the same order
        v = v_val[start:start + len(y)].to(ctx.device)
        return tx_model(v, bank.retrieve(v, tau))

    return LogitsTeacher(logits, validation_logits)
