"""``kdkit encode``: turn a trained run's images or texts (or raw real-valued vectors) into a file of
packed binary codes in faiss's layout (``.npy`` uint8 ``(N, L/8)`` + a ``.json`` metadata sidecar).

Two sources:

* ``--run DIR --modality image|text --bits L [--split query|retrieval|train|all]`` (or
  ``--text-file FILE``, one text per line): the run's method encodes them.  A method supports
  this by implementing ``encode(ctx, modality, bits, split=..., texts=None) -> (codes uint8
  (N, L/8), dataset indices or None, metadata dict)`` (``soda`` does).
* ``--features FILE.npy``: a float array ``(N, L)`` is binarised (bit set where the value is
  ``>= 0``) and packed — no run needed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kdkit.errors import KdkitError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("source (one of)")
    src.add_argument("--run", metavar="DIR", help="a finished run directory (its method encodes)")
    src.add_argument("--features", metavar="FILE", help="a .npy float array (N, L) to binarise and pack")
    parser.add_argument("--modality", choices=["image", "text"], help="with --run: which modality to encode")
    parser.add_argument("--bits", type=int, help="with --run: the code length (one the run trained)")
    parser.add_argument("--split", default="retrieval",
                        help="with --run: dataset split to encode: query, retrieval (default), train, all")
    parser.add_argument("--text-file", metavar="FILE", help="with --run --modality text: encode these lines instead")
    parser.add_argument("--device", default=None, help="override the run's device (cpu, cuda)")
    parser.add_argument("--out", "-o", required=True, metavar="FILE.npy", help="output code file (.npy)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from kdkit.retrieval import save_codes

    if bool(args.run) == bool(args.features):
        raise KdkitError("give exactly one of --run DIR or --features FILE")
    if args.features:
        import torch

        from kdkit import ops

        path = Path(args.features)
        if not path.is_file():
            raise KdkitError(f"--features: file not found: {path}")
        x = np.load(path, allow_pickle=False)
        if x.ndim != 2 or x.shape[1] % 8 or x.shape[1] == 0:
            raise KdkitError(f"--features {path}: expected a 2-D array (N, L) with L a multiple of 8, got {x.shape}")
        codes = ops.pack_bits(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
        out = save_codes(args.out, codes, {"source": str(path), "rule": "bit set where value >= 0"})
        print(f"kdkit encode: {codes.shape[0]} codes of {codes.shape[1] * 8} bits -> {out}")
        return 0
    if not args.modality or not args.bits:
        raise KdkitError("--run needs --modality image|text and --bits L")
    texts = None
    if args.text_file:
        tpath = Path(args.text_file)
        if not tpath.is_file():
            raise KdkitError(f"--text-file: file not found: {tpath}")
        texts = [ln.rstrip("\n") for ln in tpath.read_text(encoding="utf-8").splitlines()]
    ctx, method = _open_run(Path(args.run), args.device)
    if not hasattr(method, "encode"):
        raise KdkitError(f"method {ctx.config.get('method')!r} of run {args.run} does not support 'kdkit encode'")
    codes, indices, meta = method.encode(ctx, args.modality, int(args.bits), split=args.split, texts=texts)
    meta = dict(meta or {})
    labels = meta.pop("labels", None)
    meta.update({"run": str(args.run), "method": ctx.config.get("method")})
    if indices is not None:
        meta["indices"] = [int(i) for i in indices]
    out = save_codes(args.out, codes, meta)
    if labels is not None:
        np.save(out.with_name(out.stem + ".labels.npy"), np.asarray(labels))
    print(f"kdkit encode: {codes.shape[0]} {args.modality} codes of {codes.shape[1] * 8} bits -> {out}"
          + (f" (labels: {out.with_name(out.stem + '.labels.npy')})" if labels is not None else ""))
    return 0


def _open_run(run_dir: Path, device):
    """A read-only context on a finished run (config, checkpoints), like ``kdkit eval``."""
    import kdkit
    from kdkit.engine import open_run

    return open_run(run_dir, kdkit.get_plugin_manager(), device=device)
