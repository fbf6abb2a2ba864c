"""``kdkit eval --run DIR``: re-evaluate a run's best checkpoints on the test split.

What is evaluated is the method's ``evaluate(ctx)`` (for ``kd``: the best checkpoint of every
trained stage — teachers, baseline, student — on the test split).  Prints the metrics as JSON.
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="DIR", required=True, help="a run directory written by 'kdkit train'")
    parser.add_argument("--json", action="store_true", help="print only the JSON document")


def run(args: argparse.Namespace) -> int:
    from kdkit.engine import evaluate_run

    metrics = evaluate_run(args.run)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
