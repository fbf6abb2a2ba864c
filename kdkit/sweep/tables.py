"""The results of a sweep: each finished run's numbers per row (:func:`stage_metrics`,
:func:`collect` -> ``results.jsonl``), the mean ± std table (:func:`make_table` -> ``table.json``,
:func:`format_table` -> ``table.md``) and its comparison with a stored table
(:func:`load_table`, :func:`compare_tables`)."""
from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

from kdkit.config.files import load_yaml
from kdkit.errors import ConfigError, KdkitError
from kdkit.files import regular_file
from kdkit.sweep.hook import LAST_EPOCH_SPLIT
from kdkit.sweep.runs import (
    _read_failure,
    _read_wall,
    diverged_at,
    divergence,
    run_status,
)
from kdkit.sweep.spec import Sweep, canonical


def _read_jsonl(path: Path) -> list:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KdkitError(f"{path} is not UTF-8 text (a damaged file?)") from None
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                raise KdkitError(f"{path}: a line is not JSON: {line[:80]!r}") from None
            # what the trainer writes (kdkit plot checks the same): a line `5` or a record without its
            # epoch was an AttributeError / KeyError traceback in stage_metrics
            if not (isinstance(record, dict) and isinstance(record.get("stage"), str)
                    and isinstance(record.get("epoch"), int) and not isinstance(record["epoch"], bool)):
                raise KdkitError(f"{path}: a line is not a kdkit metrics record (an object with a stage name and "
                                 f"an integer epoch): {line[:80]!r}")
            out.append(record)
    return out



def stage_metrics(run_dir: Path, stage: str, records: list | None = None) -> dict:
    """The numbers of one stage of a finished run, from its ``metrics.jsonl``: ``best_epoch``
    (the trainer's selection), ``test_top1_best``, ``val_top1_best``, ``last_epoch``,
    ``test_top1_last``, ``val_top1_last`` (``None`` where the run has no such value)."""
    records = _read_jsonl(Path(run_dir) / "metrics.jsonl") if records is None else records
    mine = [r for r in records if r.get("stage") == stage]
    epochs = [r for r in mine if "split" not in r]
    tests = [r for r in mine if r.get("split") == "test"]
    lasts = [r for r in mine if r.get("split") == LAST_EPOCH_SPLIT]
    if not epochs and not tests:
        stages = ", ".join(dict.fromkeys(str(r.get("stage")) for r in records)) or "none"
        raise KdkitError(f"{run_dir}: stage {stage!r} is not in metrics.jsonl (stages: {stages})")
    best = tests[-1] if tests else None
    best_epoch = int(best["epoch"]) if best is not None else None
    last_epoch = max(int(r["epoch"]) for r in epochs) if epochs else best_epoch
    by_epoch = {int(r["epoch"]): r for r in epochs}
    test_last = None
    if lasts and int(lasts[-1]["epoch"]) == last_epoch:
        test_last = lasts[-1].get("test.top1")
    elif best is not None and best_epoch == last_epoch:
        test_last = best.get("test.top1")
    return {"best_epoch": best_epoch, "test_top1_best": best.get("test.top1") if best else None,
            "val_top1_best": by_epoch.get(best_epoch, {}).get("val.top1"), "last_epoch": last_epoch,
            "test_top1_last": test_last, "val_top1_last": by_epoch.get(last_epoch, {}).get("val.top1")}



def row_kind(stage: str) -> str:
    if stage.startswith("teacher"):
        return "teacher"
    if stage == "baseline":
        return "baseline"
    return "method"



#: the numbers of a row (``None`` where the run has none: a row that diverged or failed)
METRIC_KEYS = ("best_epoch", "test_top1_best", "val_top1_best", "last_epoch", "test_top1_last", "val_top1_last")


def _diverged_record(div: dict) -> dict:
    return {k: div.get(k) for k in ("stage", "epoch", "epochs", "step", "loss")}



def collect(sweep: Sweep, runs: list, out: Path) -> tuple[list, list]:
    """``(records, problems)``: one record per run x row of every run that ended — ``status``
    ``trained`` (its numbers), ``diverged`` (``diverged``: the stage, epoch (0-based), epochs, step and
    loss of the non-finite loss that stopped the run; the rows of stages that finished before it are
    ``trained``) or ``failed`` (``error``: why its last attempt failed) — in the order of ``runs``."""
    records, problems = [], []
    for run in runs:
        status = run_status(run.run_dir)
        failure = _read_failure(out, run) if status not in ("done", "diverged") else None
        if status not in ("done", "diverged") and failure is None:
            continue  # not run yet (or interrupted): no outcome
        div = divergence(run.run_dir) if status == "diverged" else None
        metrics_path = run.run_dir / "metrics.jsonl"
        metrics = _read_jsonl(metrics_path) if failure is None and metrics_path.is_file() else []
        select_on = None
        if failure is None:
            try:
                config = load_yaml(run.run_dir / "config.yaml")
                select_on = config["checkpoint"]["select_on"]
            except (OSError, ConfigError, KeyError, TypeError) as exc:
                problems.append(f"{run.label}: cannot read checkpoint.select_on from its config.yaml "
                                f"({type(exc).__name__})")
        for row, stage in run.cell.rows.items():
            outcome = {"status": "failed", "diverged": None, "error": failure, **dict.fromkeys(METRIC_KEYS)}
            if failure is None:
                reached = any(r.get("stage") == stage for r in metrics)
                if div is not None and (div.get("stage") == stage or not reached):
                    # the stage that diverged, or one the run never reached
                    outcome.update(status="diverged", diverged=_diverged_record(div), error=None)
                else:
                    try:
                        m = stage_metrics(run.run_dir, stage, metrics)
                    except KdkitError as exc:
                        problems.append(f"{run.label} row {row}: {exc}")
                        continue
                    outcome.update(status="trained", error=None, **m)
            records.append({
                "sweep": sweep.name, "cell": run.cell.name, "method": run.cell.method, "row": row,
                "stage": stage, "kind": row_kind(stage), "grid": dict(run.point.values), "grid_id": run.point.id,
                "seed": run.seed, "run_dir": os.path.relpath(run.run_dir, Path(out).resolve()),
                "select_on": select_on, **outcome, "wall_s": _read_wall(out, run)})
    return records, problems



def _stats(values: list) -> dict:
    values = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values), "values": values}



def row_id(row: str, point_label: str) -> str:
    return f"{row} [{point_label}]" if point_label else row



def make_table(sweep: Sweep, records: list, runs: list) -> dict:
    """``table.json``: per row and grid point, mean ± sample std over seeds of the test top-1 at the
    validation-best epoch (``best``) and at the last epoch (``last``), and the validation top-1 —
    over the seeds that trained (``seeds``); the seeds that diverged (``diverged``: seed, stage,
    epoch 0-based, epochs) and failed (``failed``) are listed, not averaged."""
    points = {p.id: p for p in sweep.grid_points()}
    selected = {r.cell.name for r in runs}
    ran_cells = [c.name for c in sweep.file_order if c.name in selected]
    rows = []
    for cell in sweep.file_order:
        if cell.name not in ran_cells:
            continue
        for row, stage in cell.rows.items():
            for point in points.values():
                mine = [r for r in records if r["cell"] == cell.name and r["row"] == row and r["grid_id"] == point.id]
                recs = [r for r in mine if r.get("status", "trained") == "trained"]
                diverged = [r for r in mine if r.get("status") == "diverged"]
                select_on = sorted({r["select_on"] for r in recs + diverged if r["select_on"]}) or ["val"]
                per_seed = {str(r["seed"]): {"best": r["test_top1_best"], "last": r["test_top1_last"]} for r in recs}
                per_seed.update({str(r["seed"]): {"best": None, "last": None, "diverged": r["diverged"]}
                                 for r in diverged})
                rows.append({
                    "id": row_id(row, point.label), "row": row, "cell": cell.name, "method": cell.method,
                    "stage": stage, "kind": row_kind(stage), "grid": dict(point.values),
                    "select_on": "/".join(select_on), "seeds": [r["seed"] for r in recs],
                    "best": _stats([r["test_top1_best"] for r in recs]),
                    "last": _stats([r["test_top1_last"] for r in recs]),
                    "val_best": _stats([r["val_top1_best"] for r in recs]),
                    "diverged": [{"seed": r["seed"], **r["diverged"]} for r in diverged],
                    "failed": [r["seed"] for r in mine if r.get("status") == "failed"],
                    # per seed, so that a slice of the seeds can be compared with this table
                    "per_seed": dict(sorted(per_seed.items(), key=lambda kv: int(kv[0])))})
    _add_paired_gains(rows)
    return {
        "sweep": sweep.name, "metric": "test top-1 (%)",
        "selections": {"best": "test top-1 at the epoch with the best validation top-1 (checkpoint.select_on; "
                               "'last' where a run has no validation) — never selected on test",
                       "last": "test top-1 at the last epoch"},
        "std": "sample standard deviation over seeds (n-1); null for one seed",
        "diverged": "seeds whose run a non-finite loss stopped (epoch 0-based): not in the mean",
        "cells": ran_cells, "seeds": sorted({r.seed for r in runs}), "rows": rows}



def _add_paired_gains(rows: list) -> None:
    """Each method row's gain over the baseline row of its grid point, paired by seed (the baseline and
    the distilled student of one seed share the data split and the initial weights, so the paired
    difference is the spread that matters): ``gain`` = stats of ``method - baseline`` at val-best, plus
    ``wins`` (seeds where the method is ahead).  Only when the grid point has exactly one baseline row."""
    by_point: dict = {}
    for r in rows:
        by_point.setdefault(canonical(r["grid"]), []).append(r)
    for group in by_point.values():
        baselines = [r for r in group if r["kind"] == "baseline"]
        if len(baselines) != 1:
            continue
        base = baselines[0]["per_seed"]
        for r in group:
            if r["kind"] != "method":
                continue
            diffs = [v["best"] - base[s]["best"] for s, v in r["per_seed"].items()
                     if s in base and v["best"] is not None and base[s]["best"] is not None]
            r["gain"] = {**_stats(diffs), "wins": sum(d > 0 for d in diffs), "baseline": baselines[0]["id"]}



def _pm(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["std"] is not None else f"{s['mean']:.2f}"



def _diverged_text(row: dict) -> str:
    """``"diverged (epoch 2/10)"`` (1-based, as train.log counts; the stage too when it is not the
    row's own: the run stopped before the row's stage)."""
    where = []
    for d in row.get("diverged") or []:
        text = diverged_at(d)
        if d.get("stage") != row["stage"]:
            text = f"{d.get('stage')} {text}"
        if text not in where:
            where.append(text)
    return f"diverged ({', '.join(where)})" if where else ""



def _seeds_text(row: dict) -> str:
    n = str(row["best"]["n"]) + (f" (last: {row['last']['n']})" if row["last"]["n"] != row["best"]["n"] else "")
    extra = []
    if row.get("diverged"):
        extra.append(f"+{len(row['diverged'])} {_diverged_text(row)}")
    if row.get("failed"):
        extra.append(f"+{len(row['failed'])} failed")
    return n + (f" ({'; '.join(extra)})" if extra and row["best"]["n"] else "")



def format_table(table: dict) -> str:
    lines = [f"# {table['sweep']}: {table['metric']}", "",
             ("Mean ± sample std over seeds.  **val-best**: the epoch with the best validation top-1 "
              "(checkpoint.select_on=val); **last**: the last epoch.  No number is selected on the test split."), "",
             ("| row | cell | method | test top-1 @ val-best | test top-1 @ last | val top-1 @ val-best "
              "| gain over baseline (paired) | n seeds |"),
             "|---|---|---|---|---|---|---|---|"]
    notes = set()
    for r in table["rows"]:
        name = r["id"]
        if r["select_on"] != "val":
            name += " †"
            notes.add("† checkpoint.select_on=last: no validation split, the selected epoch is the last one.")
        if r.get("diverged"):
            notes.add("diverged (epoch e/E): a non-finite loss stopped that seed's run in epoch e of E (its "
                      "diverged.json); those seeds are not in the mean, n seeds counts the others.")
        gain = r.get("gain")
        gain_text = "-" if not gain or gain["mean"] is None else (
            f"{gain['mean']:+.2f}" + (f" ± {gain['std']:.2f}" if gain["std"] is not None else "")
            + f" ({gain['wins']}/{gain['n']})")
        best, last, val = _pm(r["best"]), _pm(r["last"]), _pm(r["val_best"])
        if r["best"]["n"] == 0 and r.get("diverged"):  # every seed diverged: say so instead of "-"
            best = last = val = _diverged_text(r)
        elif r["best"]["n"] == 0 and r.get("failed"):
            best = last = val = "failed"
        lines.append(f"| {name} | {r['cell']} | {r['method']} | {best} | {last} | "
                     f"{val} | {gain_text} | {_seeds_text(r)} |")
    if any(r.get("gain") for r in table["rows"]):
        notes.add("gain over baseline (paired): mean ± std over seeds of (method - baseline) at val-best, each "
                  "seed's student against the same seed's baseline; (k/n): seeds where the method is ahead.")
    lines += [""] + sorted(notes) + ([""] if notes else [])
    lines.append(f"seeds: {', '.join(map(str, table['seeds']))}; cells: {', '.join(table['cells'])}")
    return "\n".join(lines) + "\n"



class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    """A JSON object of ``pairs``; a key given twice (a hand-edited reference) is refused, as in YAML:
    json keeps the last one silently, so `"best": {"mean": 60}, "best": {"mean": 90}` compared 90."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(f"key {_short(key)} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def load_table(path: str | Path) -> dict:
    """A reference ``table.json`` for ``--compare``, its structure checked here, once: every value
    :func:`compare_tables` reads is of its type (a finite mean, integer seeds, one row per id), so a
    bad reference is a one-line :class:`ConfigError` naming the file and the row, never a silent pass."""
    path = regular_file(path, "--compare: reference table", ConfigError)
    try:
        table = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ConfigError(f"--compare {path}: {exc}; keep one") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: brackets nested too deeply
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError(f"--compare {path}: not JSON ({why})") from None
    if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
        got = type(table.get("rows")).__name__ if isinstance(table, dict) else type(table).__name__
        raise ConfigError(f"--compare {path}: not a kdkit sweep table.json: rows is a {got}; expected a list "
                          "of rows (each with id and best)")
    if not table["rows"]:
        raise ConfigError(f"--compare {path}: the table has no rows: nothing to compare with")
    seen: dict = {}
    for i, row in enumerate(table["rows"]):
        where = f"rows[{i}]" + (f" ({row['id']})" if isinstance(row, dict) and isinstance(row.get("id"), str)
                                 and row["id"] else "")
        problem = _row_problem(row)
        if problem is None and row["id"] in seen:
            problem = f"row {row['id']!r} appears twice (also rows[{seen[row['id']]}]); keep one"
        if problem is not None:
            raise ConfigError(f"--compare {path}: {where}: {problem}")
        seen[row["id"]] = i
    return table



def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."



def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)



def _mean_problem(value, what: str) -> str | None:
    """What is wrong with a top-1 value the comparison reads (``None``: nothing; null means no result)."""
    if value is None:
        return None
    # bool is an int: true would be compared as 1.0; NaN would pass every band
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{what} is {_short(value)}; expected a finite number (top-1 %) or null"
    return None



def _row_problem(row) -> str | None:
    """What is wrong with a reference row (``None``: nothing).  Optional keys (an older table's) may
    be missing; those present must hold what :func:`make_table` writes."""
    if not isinstance(row, dict):
        return f"expected a mapping with id and best, got {_short(row)}"
    if not isinstance(row.get("id"), str) or not row["id"]:
        return f"id is {_short(row.get('id'))}; expected a non-empty string (the row's name)"
    for sel in ("best", "last"):
        if sel not in row and sel == "last":
            continue
        if not isinstance(row.get(sel), dict):
            return f"{sel} is {_short(row.get(sel))}; expected a mapping with mean"
        problem = _mean_problem(row[sel].get("mean"), f"{sel}.mean")
        if problem:
            return problem
    seeds = row.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not all(_is_int(s) and s >= 0 for s in seeds)):
        return f"seeds is {_short(seeds)}; expected a list of integers >= 0"
    per_seed = row.get("per_seed")
    if per_seed is not None:
        if not isinstance(per_seed, dict):
            return f"per_seed is {_short(per_seed)}; expected a mapping of seed to {{best, last}}"
        for seed, values in per_seed.items():
            if not seed.isdigit() or str(int(seed)) != seed:
                return f"per_seed: key {_short(seed)} is not a seed (an integer >= 0)"
            if not isinstance(values, dict):
                return f"per_seed.{seed} is {_short(values)}; expected a mapping with best and last"
            for sel in ("best", "last"):
                problem = _mean_problem(values.get(sel), f"per_seed.{seed}.{sel}")
                if problem:
                    return problem
            if values.get("diverged") is not None and not isinstance(values["diverged"], dict):
                return f"per_seed.{seed}.diverged is {_short(values['diverged'])}; expected a mapping or null"
    diverged = row.get("diverged")
    if diverged is not None:
        if not isinstance(diverged, list):
            return f"diverged is {_short(diverged)}; expected a list of {{seed, stage, epoch, ...}}"
        for j, d in enumerate(diverged):
            if not isinstance(d, dict) or not _is_int(d.get("seed")) or d["seed"] < 0:
                return f"diverged[{j}] is {_short(d)}; expected a mapping whose seed is an integer >= 0"
    return None



def check_common_rows(reference: dict, sweep: Sweep, runs: list, path) -> None:
    """Refuse a reference without a row of this sweep (or slice): nothing would be compared.  Checked
    before anything runs."""
    cells, points = {r.cell.name for r in runs}, sweep.grid_points()
    ours = [row_id(row, point.label) for cell in sweep.file_order if cell.name in cells
            for row in cell.rows for point in points]
    theirs = [r["id"] for r in reference["rows"]]
    if not set(ours) & set(theirs):
        def some(ids: list) -> str:
            return ", ".join(ids[:5]) + (f", ... ({len(ids)})" if len(ids) > 5 else "")

        raise ConfigError(f"--compare {path}: no row of this sweep is in the reference (reference rows: "
                          f"{some(theirs)}; this sweep's: {some(ours)}); nothing would be compared — give the "
                          "table.json of this sweep file")



def _reference_mean(ref: dict, sel: str, seeds: list):
    """The reference's mean of ``sel`` over ``seeds`` — the seeds this run has — when it stores per-seed
    values for all of them (a slice of the seeds is compared seed for seed), else its mean over its own."""
    per_seed = ref.get("per_seed") or {}
    values = [(per_seed.get(str(s)) or {}).get(sel) for s in seeds]
    if seeds and sorted(seeds) != sorted(ref.get("seeds") or []) and all(v is not None for v in values):
        return statistics.fmean(float(v) for v in values)
    return (ref.get(sel) or {}).get("mean")



def _diverged_seeds(row: dict) -> set:
    seeds = {d.get("seed") for d in row.get("diverged") or [] if isinstance(d, dict)}
    seeds |= {int(s) for s, v in (row.get("per_seed") or {}).items() if isinstance(v, dict) and v.get("diverged")}
    return seeds



def _seed_list(seeds) -> str:
    return ", ".join(map(str, sorted(seeds))) or "none"



def compare_tables(table: dict, reference: dict, tolerance: float) -> tuple[list, int]:
    """Lines of a comparison and the number of rows outside ``|mean - ref_mean| <= tolerance`` (1 when
    no row could be compared); the reference mean is taken over the seeds this table has where the
    reference stores them per seed.  ``reference`` is a :func:`load_table` (its structure checked).

    Divergence is compared seed for seed, over the seeds both tables know: a seed that diverged in one
    table but not in the other puts the row out of band; a row whose compared seeds all diverged in
    both is ``ok`` (diverged in both); the means are over the seeds that trained, as ever."""
    ours = {r["id"]: r for r in table["rows"]}
    lines, failed, ok, skipped = [], 0, 0, []
    for ref in reference["rows"]:
        rid = ref["id"]
        mine = ours.get(rid)
        if mine is None:
            skipped.append(f"{rid} (not run)")
            continue
        ref_div, our_div = _diverged_seeds(ref), _diverged_seeds(mine)
        known = set(ref.get("seeds") or []) | {int(s) for s in ref.get("per_seed") or {}} | ref_div
        common = (set(mine.get("seeds") or []) | our_div) & known
        if ref_div & common != our_div & common:
            failed += 1
            lines.append(f"  OUT OF BAND: {rid}: diverged seeds differ: here {_seed_list(our_div & common)}, "
                         f"reference {_seed_list(ref_div & common)}")
            continue
        both = our_div & common
        parts, bad = [], False
        for sel, title in (("best", "val-best"), ("last", "last")):
            rm, m = _reference_mean(ref, sel, mine.get("seeds") or []), (mine.get(sel) or {}).get("mean")
            if rm is None or m is None:
                continue
            diff = m - rm
            out = abs(diff) > tolerance
            bad |= out
            parts.append(f"@{title} {m:.2f} vs {rm:.2f} ({diff:+.2f}{' > ' if out else ' <= '}{tolerance:g})")
        if both:
            parts.append(f"diverged in both (seed{'s' if len(both) > 1 else ''} {_seed_list(both)})")
        if not parts:
            skipped.append(f"{rid} (no results)")
            continue
        failed += bad
        ok += not bad
        lines.append(f"  {'OUT OF BAND' if bad else 'ok'}: {rid}: " + "; ".join(parts))
    if skipped:
        lines.append(f"  not compared: {', '.join(skipped)}")
    new = [rid for rid in ours if rid not in {r['id'] for r in reference['rows']}]
    if new:
        lines.append(f"  not in the reference: {', '.join(new)}")
    if not ok and not failed:  # every row in common lacked results: nothing passed
        lines.append(f"compare: no row was compared (not compared: {', '.join(skipped)})")
        return lines, 1
    lines.append(f"compare: {ok} row(s) within ±{tolerance:g} points, {failed} outside")
    return lines, failed
