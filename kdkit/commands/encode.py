"""``kdkit encode``: turn a trained run's images or texts (or raw real-valued vectors) into a file of
packed binary codes in faiss's layout (``.npy`` uint8 ``(N, L/8)`` + a ``.json`` metadata sidecar).

Two sources:

* ``--run DIR --modality image|text --bits L [--split query|retrieval|train|all]`` (or
  ``--text-file FILE``, one text per line): the run's method encodes them.  A method supports
  this by implementing ``encode(ctx, modality, bits, split=..., texts=None) -> (codes uint8
  (N, L/8), dataset indices or None, metadata dict)`` (``soda`` does), declared with the rest of
  the method protocol by :class:`kdkit.Method` (:mod:`kdkit.methodspec`).
* ``--features FILE.npy``: a float array ``(N, L)`` is binarised (bit set where the value is
  ``>= 0``) and packed — no run needed.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from kdkit.errors import DataError, KdkitError
from kdkit.files import file_kind, regular_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("source (one of)")
    src.add_argument("--run", metavar="DIR", help="a finished run directory (its method encodes)")
    src.add_argument("--features", metavar="FILE", help="a .npy float array (N, L) to binarise and pack")
    parser.add_argument("--modality", choices=["image", "text"], help="with --run: which modality to encode")
    parser.add_argument("--bits", type=int, help="with --run: the code length (one the run trained); with "
                                                 "--features: optional, must equal the feature dimension")
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
    out_path = _out_path(args.out)
    if args.features:
        import torch

        from kdkit import ops

        path = regular_file(args.features, "--features: file")
        if out_path.resolve() == path.resolve() or (out_path.exists() and os.path.samefile(out_path, path)):
            raise KdkitError(f"--out {args.out} is the --features input {path}; writing the codes there would "
                             "overwrite it: choose another --out")
        x = _load_features(path)
        if args.bits is not None and int(args.bits) != x.shape[1]:  # it was ignored: 64-bit codes for --bits 32
            raise KdkitError(f"--bits {args.bits}: --features {path} has {x.shape[1]} dimensions, one bit each; "
                             f"drop --bits, or give {x.shape[1]}")
        # compare in numpy (exact for every real dtype, no float32 rounding to -0.0); bool is the bit itself
        signs = x if x.dtype == np.bool_ else x >= 0
        codes = ops.pack_bits(torch.from_numpy(np.ascontiguousarray(signs))).numpy()
        out = save_codes(out_path, codes, {"source": str(path), "rule": "bit set where value >= 0"})
        print(f"kdkit encode: {codes.shape[0]} codes of {codes.shape[1] * 8} bits -> {out}")
        return 0
    if not args.modality or not args.bits:
        raise KdkitError("--run needs --modality image|text and --bits L")
    texts = None
    if args.text_file:
        tpath = regular_file(args.text_file, "--text-file: file")
        texts = [ln.rstrip("\n") for ln in tpath.read_text(encoding="utf-8").splitlines()]
    ctx, method = _open_run(Path(args.run), args.device)
    if not hasattr(method, "encode"):
        raise KdkitError(f"method {ctx.config['method']!r} of run {args.run} does not support 'kdkit encode'")
    codes, indices, meta = method.encode(ctx, args.modality, int(args.bits), split=args.split, texts=texts)
    meta = dict(meta or {})
    labels = meta.pop("labels", None)
    meta.update({"run": str(args.run), "method": ctx.config["method"]})
    if indices is not None:
        meta["indices"] = [int(i) for i in indices]
    out = save_codes(out_path, codes, meta)
    if labels is not None:
        np.save(out.with_name(out.stem + ".labels.npy"), np.asarray(labels))
    print(f"kdkit encode: {codes.shape[0]} {args.modality} codes of {codes.shape[1] * 8} bits -> {out}"
          + (f" (labels: {out.with_name(out.stem + '.labels.npy')})" if labels is not None else ""))
    return 0


def _out_path(out: str) -> Path:
    """The code file ``--out`` names, checked before any work: a directory there would make the
    final rename fail and leave the temp file behind."""
    from kdkit.retrieval import code_file_path

    if not out.strip():
        raise KdkitError("--out is empty; give a file name, e.g. --out codes.npy")
    path = Path(out)
    if out.endswith(("/", os.sep)) and not path.is_dir():  # `--out codes/` wrote codes.npy beside it
        raise KdkitError(f"--out {out} names a directory (it ends in a slash); give a file name, e.g. "
                         f"--out {path / 'codes.npy'}")
    if path.exists() and not (path.is_file() or path.is_dir()):  # `--out /dev/null` wrote /dev/null.npy
        raise KdkitError(f"--out {out} is {file_kind(path.stat().st_mode)}, not a regular file; give a file name, "
                         "e.g. --out codes.npy")
    code = None if path.is_dir() else code_file_path(path)  # '.' has no name to append .npy to
    for candidate in (path, code):
        if candidate is not None and candidate.is_dir():
            what = f"--out {out} is a directory" if candidate is path else \
                f"--out {out}: the codes would go to {candidate}, a directory"
            raise KdkitError(f"{what}; give a file name, e.g. --out {candidate / 'codes.npy'}")
    return code


def _load_features(path: Path):
    """The ``--features`` array: real numbers ``(N, L)``, L a positive multiple of 8, no NaN."""
    import numpy as np

    with open(path, "rb") as fh:
        magic = fh.read(6)
    # np.load takes anything else for a pickle and blames that, even for a text file
    if magic != b"\x93NUMPY":
        raise DataError(f"--features {path}: not a .npy file (no NUMPY header); "
                        "give a float array (N, L) saved with numpy.save")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for a corrupt header or body
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"--features {path}: cannot read the .npy file ({reason}); "
                        "give a float array (N, L) saved with numpy.save") from None
    if x.dtype.kind not in "biuf":
        raise DataError(f"--features {path}: dtype {x.dtype} is not real numbers; give a float array (N, L)")
    if x.ndim != 2 or x.shape[1] % 8 or x.shape[1] == 0:
        raise DataError(f"--features {path}: expected a 2-D array (N, L) with L a multiple of 8, got {x.shape}")
    if x.dtype.kind == "f":
        nan_rows = np.flatnonzero(np.isnan(x).any(axis=1))
        if nan_rows.size:
            raise DataError(f"--features {path}: {nan_rows.size} rows hold NaN (first: row {nan_rows[0]}); "
                            "NaN has no sign to binarise: fix or drop those rows")
    return x


def _open_run(run_dir: Path, device):
    """A read-only context on a finished run (config, checkpoints), like ``kdkit eval``."""
    import kdkit
    from kdkit.engine import open_run

    return open_run(run_dir, kdkit.get_plugin_manager(), device=device)
