"""``kdkit layers MODEL``: the module paths a feature term can tap, with their output shapes.

The model is built by name from the students registry (the teachers registry with ``--teacher``, or
when only it holds the name), with ``--set KEY=VALUE`` model options, and run once on a zero input
(``--input CxHxW``; by default 32 x 32, then 224 x 224, with the channels of its first convolution).
The listing is :func:`kdkit.distill.taps.list_layers`, the one a wrong tap path's error draws on.
"""
from __future__ import annotations

import argparse
import json
import re

from kdkit.errors import ConfigError


def _input_shape(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"[1-9][0-9]*(x[1-9][0-9]*)*", text):
        raise argparse.ArgumentTypeError(f"expected positive sizes joined by 'x' (e.g. 3x32x32), got {text!r}")
    return tuple(int(n) for n in text.split("x"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a student or teacher name (see 'kdkit plugins')")
    parser.add_argument("--input", metavar="CxHxW", type=_input_shape, default=None,
                        help="the input of one sample (default: 32x32, else 224x224, with the channels of the "
                             "model's first convolution)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                        help="a model option, YAML value (repeatable), e.g. --set width=8")
    parser.add_argument("--num-classes", metavar="N", type=int, default=10, help="classes of the head (default 10)")
    parser.add_argument("--teacher", action="store_true", help="build MODEL from the teachers registry")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON document: {model, input, layers: [{path, type, shape}]}")


def _options(sets: list[str]) -> dict:
    from kdkit.config.files import parse_yaml

    options = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set width=8")
        options[key.strip()] = parse_yaml(value, f"--set {item!r}: the value is not valid YAML", with_position=False)
    return options


def build_named_model(name: str, num_classes: int, options: dict, teacher: bool = False):
    """``name`` built from the students registry (the teachers one with ``teacher``, or when only it
    knows the name) with ``options``: a registered name or one of a source (``torchvision:NAME``, ...);
    an unknown name is the students registry's error, which lists the valid choices."""
    import kdkit
    from kdkit.errors import UnknownComponentError

    if teacher:
        return kdkit.get_registry("teachers").build(name, num_classes, **options)
    try:
        component = kdkit.get_registry("students").get(name)
    except UnknownComponentError:
        try:
            component = kdkit.get_registry("teachers").get(name)
        except UnknownComponentError:
            pass
        else:
            return component.build(num_classes, **options)
        raise
    return component.build(num_classes, **options)


def run(args: argparse.Namespace) -> int:
    if args.num_classes < 1:
        raise ConfigError(f"--num-classes must be >= 1, got {args.num_classes}")
    from kdkit.distill.taps import probe_layers

    model = build_named_model(args.model, args.num_classes, _options(args.sets), args.teacher)
    try:
        shape, layers = probe_layers(model, args.input)
    except Exception as exc:  # noqa: BLE001 - the model's own error, as the user's one line
        tried = "x".join(map(str, args.input)) if args.input else "3x32x32 or 3x224x224"
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model {args.model!r} does not run on a {tried} input ({type(exc).__name__}: {line}); "
                          "give its input size with --input CxHxW") from None
    if args.json:
        print(json.dumps({"model": args.model, "input": list(shape), "layers": [layer.to_dict() for layer in layers]},
                         indent=2))
        return 0
    width = max((len(layer.path) for layer in layers), default=4)
    print(f"# {args.model}, input {'x'.join(map(str, shape))}: module outputs in execution order "
          "(batch of 1; feature terms tap the 4-D maps)")
    for layer in layers:
        out = ("x".join(map(str, layer.shape)) if layer.shape else
               ("(not run)" if layer.shape == () else "(not a tensor)"))
        print(f"{layer.path:<{width}}  {out:<16}  {layer.type}")
    return 0
