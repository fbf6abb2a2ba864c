"""Bad invocations of every command, through the real CLI: exit status 2 and one line on stderr
naming the problem; a config that fails validation creates no run directory.  A bug in kdkit is
exit 1 with its traceback and a "please report" line (issue 12: config validated before anything
runs, exit codes)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import kdkit_prestarted
import pytest

from kdkit import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("clean_plugin_manager")


@pytest.fixture
def files(tmp_path):
    """Bad inputs under tmp_path; their names are the ``{name}`` placeholders of the table."""
    def write(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    paths = {
        "tmp": str(tmp_path),
        "latin1": write("latin1.yaml", "train:\n  lr: 0.1  # r\xe9glage\n".encode("latin-1")),
        "list": write("list.yaml", b"- train\n- seed\n"),
        "scalar": write("scalar.yaml", b"42\n"),
        "broken": write("broken.yaml", b"train: {lr: [\n"),
        "tagged": write("tagged.yaml", b"seed: !!python/object/apply:os.getpid []\n"),
        "deep": write("deep.yaml", b"seed: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        "train_int": write("train_int.yaml", b"train: 5\n"),
        "bad_date": write("bad_date.yaml", b"seed: 2020-13-45\n"),
        "huge_int": write("huge_int.yaml", b"seed: " + b"9" * 5000 + b"\n"),
        # aliases of aliases (in an open mapping) expand to 10^9 values when walked; a self-alias to
        # infinitely many
        "alias_bomb": write("alias_bomb.yaml", ("relax:\n  senses:\n    a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                                                + "".join(f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n"
                                                          for i in range(1, 9))).encode()),
        "self_alias": write("self_alias.yaml", b"relax: {senses: &s {x: *s}}\n"),
        "weights_dir": str(tmp_path),
        "run_method_list": write("run_method_list/config.yaml", b"method: [kd]\n"),
        "run_latin1": write("run_latin1/config.yaml", b"method: kd\nseed: \xe9\n"),
        "metrics_latin1": write("metrics_latin1/metrics.jsonl", b'{"stage": "s\xe9", "epoch": 0}\n'),
        "metrics_list": write("metrics_list/metrics.jsonl", b"[1, 2]\n"),
        "metrics_no_epoch": write("metrics_no_epoch/metrics.jsonl", b'{"stage": "student", "val.top1": 1}\n'),
        "metrics_no_numbers": write("metrics_no_numbers/metrics.jsonl", b'{"stage": "student", "epoch": 0}\n'),
        "sweep_bad_set": write("sweep_bad_set.yaml", b"seeds: [0]\ncells: [{name: a, method: kd, "
                                                     b"set: {train.lr: -1}}]\n"),
    }
    for name in ("run_method_list", "run_latin1", "metrics_latin1", "metrics_list", "metrics_no_epoch",
                 "metrics_no_numbers"):
        paths[name] = os.path.dirname(paths[name])
    return paths


def _train(*args: str) -> list[str]:
    return ["train", "--out", "{tmp}/run", *args]


# (argv with {placeholders}, a piece of the one-line message)
BAD_INVOCATIONS = {
    # --- every key's type, range and choice, found before anything trains
    "lr negative": (_train("--set", "train.lr=-0.1"), "config key train.lr: expected float in (0, inf), got -0.1"),
    "lr not a number": (_train("--set", "train.lr=abc"), "config key train.lr: expected float in (0, inf), got str"),
    "lr nan": (_train("--set", "train.lr=.nan"), "config key train.lr: expected float in (0, inf), got nan"),
    "batch size 0": (_train("--set", "train.batch_size=0"), "config key train.batch_size: expected int in [1, inf)"),
    "num_workers -1": (_train("--set", "data.num_workers=-1"), "config key data.num_workers: expected int in [0, inf)"),
    "num_workers not a train key": (_train("--set", "train.num_workers=2"), "unknown config key 'train.num_workers'"),
    "epochs 0": (_train("--set", "train.epochs=0"), "config key train.epochs: expected int in [1, inf), got 0"),
    "teacher epochs 0": (_train("--set", "teacher_train.epochs=0"), "config key teacher_train.epochs: expected int"),
    "teacher lr negative": (_train("--set", "teacher_train.lr=-0.1"), "config key teacher_train.lr: expected float"),
    "unknown optimizer": (_train("--set", "train.optimizer=lion"), "config key train.optimizer: unknown optimizer "
                                                                   "'lion'; valid: sgd, adam, adamw, ASGD"),
    "unknown scheduler": (_train("--set", "teacher_train.scheduler=poly"), "config key teacher_train.scheduler: "
                                                                           "unknown scheduler 'poly'; did you mean "
                                                                           "PolynomialLR? valid: none, constant"),
    "optimizer option": (_train("--set", "train.optimizer=AdamW", "--set", "train.optimizer_options.beta=0.9"),
                         "config key train.optimizer_options: AdamW takes no option 'beta'; valid: betas"),
    "scheduler option": (_train("--set", "teacher_train.scheduler=OneCycleLR", "--set",
                                "teacher_train.scheduler_options.pct=0.3"),
                         "OneCycleLR takes no option 'pct'; valid: max_lr, total_steps"),
    "ReduceLROnPlateau": (_train("--set", "train.scheduler=ReduceLROnPlateau"), "ReduceLROnPlateau is not supported"),
    "accumulate 0": (_train("--set", "train.accumulate=0"), "config key train.accumulate: expected int in [1, inf)"),
    "unknown precision": (_train("--set", "train.precision=fp8"), "config key train.precision: expected one of auto, "
                                                                  "fp32, bf16, fp16, got 'fp8'"),
    "early stop key": (_train("--set", "train.early_stop.wait=2"), "unknown config key 'train.early_stop.wait'"),
    "unknown dataset": (_train("--set", "data.name=imagenet22k"), "unknown dataset 'imagenet22k'; valid choices:"),
    "unknown student": (_train("--set", "student.name=vit_huge"), "unknown student 'vit_huge'; valid choices:"),
    "unknown teacher": (_train("--set", "teachers.0.name=vit_huge"), "unknown teacher 'vit_huge'; valid choices:"),
    "student width 0": (_train("--set", "student.width=0"), "config key student.width: expected int in [1, inf)"),
    "teacher in_channels 0": (_train("--set", "teachers.0.in_channels=0"), "config key teachers.0.in_channels: "
                                                                           "expected int in [1, inf), got 0"),
    "no training images per class": (_train("--set", "data.train_per_class=0"),
                                     "config key data.train_per_class: expected int in [1, inf) or null, got 0"),
    # issue 22 rerun: nothing held out, so the last epoch was kept while summary.json said "val"
    "val split of nothing": (_train("--set", "data.val_fraction=0"), "config key checkpoint.select_on: val selects "
                                                                     "the best epoch on data.val_fraction of the "
                                                                     "training split, and data.val_fraction is 0"),
    "null test images for shapes": (_train("--set", "data.name=shapes", "--set", "data.test_per_class=null"),
                                    "config key data.test_per_class: expected int in [1, inf), got null"),
    "zero-pixel Fashion-MNIST": (_train("--set", "data.name=fashion_mnist", "--set", "data.image_size=0"),
                                 "config key data.image_size: expected int in [1, inf), got 0"),
    "missing teacher weights": (_train("--set", "teachers.0.pretrained={tmp}/nope.pt"),
                                "config key teachers.0.pretrained: file not found: {tmp}/nope.pt"),
    "student weights a directory": (_train("--set", "student.pretrained={weights_dir}"),
                                    "config key student.pretrained: {weights_dir} is a directory"),
    "weights under an unknown ~user": (_train("--set", "student.pretrained=~kdkit_no_such_user/w.pt"),
                                       "config key student.pretrained: file not found: ~kdkit_no_such_user/w.pt"),
    "weights path with a line break": (_train("--set", 'student.pretrained="a\\nb.pt"'),
                                       "config key student.pretrained: file not found: 'a\\nb.pt'"),
    "untrained teacher without weights": (_train("--set", "teachers.0.train=false"),
                                          "config key teachers.0: train: false needs pretrained weights"),
    "method set to another": (_train("--set", "method=dkd"), "config key method is 'dkd' but the method run is 'kd'"),
    "empty --method": (_train("--method", ""), "no method selected: use --method NAME"),
    "unknown method": (_train("--method", "hinton2015"), "unknown method 'hinton2015'; valid choices:"),
    "term option of the wrong type": (_train("--method", "dkd", "--set", "distill.terms.0.options.alpha=abc"),
                                      "config key distill.terms.0.options.alpha: expected float in [0, inf), got str"),
    "preset method set to kd": (_train("--method", "dkd", "--set", "method=kd"), "config key method is 'kd'"),
    "wordnet_relax T_x lr": (_train("--method", "wordnet_relax", "--set", "tx.train.lr=-1"),
                             "config key tx.train.lr: expected float in (0, inf)"),
    "wordnet_relax T_x epochs 0": (_train("--method", "wordnet_relax", "--set", "tx.train.epochs=0"),
                                   "config key tx.train.epochs: expected int in [1, inf), got 0"),
    "wordnet_relax untrained teacher": (_train("--method", "wordnet_relax", "--set", "teachers.1.train=false"),
                                        "config key teachers.1: train: false needs pretrained weights"),
    "wordnet_relax missing teacher weights": (_train("--method", "wordnet_relax", "--set",
                                                     "teachers.0.pretrained={tmp}/nope.pt"),
                                              "config key teachers.0.pretrained: file not found"),
    "wordnet_relax missing pool file": (_train("--method", "wordnet_relax", "--set", "relax.pool=file", "--set",
                                               "relax.pool_file={tmp}/nouns.txt"),
                                        "config key relax.pool_file: file not found: {tmp}/nouns.txt"),
    "wordnet_relax pool file unset": (_train("--method", "wordnet_relax", "--set", "relax.pool=file"),
                                      "relax.pool=file needs relax.pool_file"),
    "wordnet_relax unknown backbone": (_train("--method", "wordnet_relax", "--set", "tx.backbone=vit9000"),
                                       "config key tx.backbone: unknown backbone 'vit9000'; valid choices: mlp,"),
    "wordnet_relax unknown relaxer": (_train("--method", "wordnet_relax", "--set", "relax.relaxer=thesaurus"),
                                      "unknown text relaxer 'thesaurus'"),
    "soda epochs 0": (_train("--method", "soda", "--set", "train.epochs=0"), "config key train.epochs: expected int"),
    "soda stage epochs 0": (_train("--method", "soda", "--set", "soda.teacher_epochs=0"),
                            "config key soda.teacher_epochs: expected int in [1, inf) or null, got 0"),
    "soda bits": (_train("--method", "soda", "--set", "soda.bits=[12]"), "config key soda.bits: 12 is not a multiple"),
    # --- config files
    "config not UTF-8": (_train("--config", "{latin1}"), "config file {latin1} is not UTF-8 text (byte 0xe9"),
    "config a directory": (_train("--config", "{tmp}"), "config file {tmp} is a directory"),
    "config missing": (_train("--config", "{tmp}/nope.yaml"), "config file not found: {tmp}/nope.yaml"),
    "config a list": (_train("--config", "{list}"), "must contain a mapping at the top level, got list"),
    "config a scalar": (_train("--config", "{scalar}"), "must contain a mapping at the top level, got int"),
    "config invalid YAML": (_train("--config", "{broken}"), "invalid YAML in {broken} (line"),
    "config python tag": (_train("--config", "{tagged}"), "could not determine a constructor for the tag"),
    "config nested too deeply": (_train("--config", "{deep}"), "invalid YAML in {deep}: collections nested too "
                                                               "deeply"),
    "config section a number": (_train("--config", "{train_int}"), "config key train: expected mapping, got int"),
    "config impossible date": (_train("--config", "{bad_date}"), "invalid YAML in {bad_date}: a value cannot be read "
                                                                 "(month must be in 1..12)"),
    "config 5000-digit int": (_train("--config", "{huge_int}"), "invalid YAML in {huge_int}: a value cannot be read"),
    "config alias bomb": (_train("--method", "wordnet_relax", "--config", "{alias_bomb}"),
                          "the document expands to more than 100000 values"),
    "config alias in itself": (_train("--method", "wordnet_relax", "--config", "{self_alias}"),
                               "the document expands to more than 100000 values"),
    # --- --set syntax
    "--set without =": (_train("--set", "seed"), "--set expects KEY=VALUE (dotted key), got 'seed'"),
    "--set empty key": (_train("--set", "=1"), "--set: invalid key ''"),
    "--set empty path part": (_train("--set", "train..lr=1"), "--set: invalid key 'train..lr'"),
    "--set bad YAML": (_train("--set", "train.milestones=[1"), "--set train.milestones: value '[1' is not valid YAML"),
    "--set accidental mapping": (_train("--set", "data.name=a: b"), "parses as a mapping; quote it"),
    "--set unknown key": (_train("--set", "train.epoch=3"), "unknown config key 'train.epoch'; valid keys at train:"),
    "--set into a scalar": (_train("--set", "train.lr.x=1"), "--set train.lr.x: train.lr is not a mapping"),
    "--set list index range": (_train("--set", "teachers.5.name=resnet8"), "index 5 out of range"),
    "--set list index word": (_train("--set", "teachers.first.name=resnet8"), "'first' must be a list index"),
    "--set no teachers": (_train("--set", "teachers=[]"), "config key teachers: at least one teacher is needed"),
    "line break in a file name": (_train("--config", "{tmp}/a\nb.yaml"), "config file not found: {tmp}/a\\nb.yaml"),
    "--resume with --set": (["train", "--resume", "{tmp}", "--set", "seed=1"], "not a kdkit run directory"),
    # issue 22 rerun: an empty --out (an unset shell variable) was the current directory
    "empty --out": (_train("--out", ""), "--out is empty; give a run directory"),
    "blank --out": (_train("--out", " "), "--out is empty; give a run directory"),
    "empty --resume": (["train", "--resume", ""], "--resume is empty; give a run directory"),
    "sweep empty --out": (["sweep", "{sweep_bad_set}", "--out", ""], "--out is empty; give the sweep's directory"),
    # --- other commands
    "eval missing run": (["eval", "--run", "{tmp}/nope"], "not a kdkit run directory"),
    "eval method a list": (["eval", "--run", "{run_method_list}"], "config key method: expected a method name"),
    "eval config not UTF-8": (["eval", "--run", "{run_latin1}"], "config.yaml is not UTF-8 text"),
    "eval without --run": (["eval"], "kdkit eval: error: the following arguments are required: --run"),
    "plot missing run": (["plot", "{tmp}/nope"], "no metrics.jsonl"),
    "plot metrics not UTF-8": (["plot", "{metrics_latin1}"], "metrics.jsonl is not UTF-8 text"),
    "plot metrics a list": (["plot", "{metrics_list}"], "line 1 is not a kdkit metrics record"),
    "plot metrics without epoch": (["plot", "{metrics_no_epoch}"], "line 1 is not a kdkit metrics record"),
    "plot nothing numeric": (["plot", "{metrics_no_numbers}"], "has no numeric metrics to plot"),
    "sweep missing file": (["sweep", "{tmp}/nope.yaml"], "config file not found"),
    "sweep file a directory": (["sweep", "{tmp}"], "is a directory"),
    "sweep file not UTF-8": (["sweep", "{latin1}"], "is not UTF-8 text"),
    "sweep file a list": (["sweep", "{list}"], "must contain a mapping at the top level"),
    "sweep cell config": (["sweep", "{sweep_bad_set}", "--no-run"], "cell a (a seed=0): config key train.lr"),
    "sweep bad --seeds": (["sweep", "{sweep_bad_set}", "--seeds", "x"], "argument --seeds: expected comma-separated"),
    "plugins unknown module": (["--plugins-module", "no_such_pkg.plugin", "plugins"], "cannot import plugin module"),
    "plugins unknown flag": (["plugins", "--colour"], "kdkit plugins: error: unrecognized arguments: --colour"),
    "info unknown flag": (["info", "--verbose"], "kdkit info: error: unrecognized arguments: --verbose"),
    "train unknown flag": (["train", "--epochs", "3"], "kdkit train: error: unrecognized arguments: --epochs 3"),
    "bench repeat 0": (["bench", "--quick", "--repeat", "0"], "--repeat must be >= 1, got 0"),
    "bench bits": (["bench", "--quick", "--bits", "12"], "--bits values must be positive multiples of 8"),
    "encode without --out": (["encode", "--features", "{tmp}/f.npy"], "the following arguments are required: --out"),
    "search without --db": (["search", "--queries", "{tmp}/q.npy"], "the following arguments are required: --db"),
    "unknown command": (["distil"], "argument COMMAND: invalid choice: 'distil'"),
}


@pytest.mark.parametrize("argv, message", BAD_INVOCATIONS.values(), ids=BAD_INVOCATIONS.keys())
def test_bad_invocation_is_one_line_and_exit_2(argv, message, files, capsys):
    argv = [arg.format(**files) for arg in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(("kdkit: error: ", f"kdkit {argv[0]}: error: ")), err
    assert message.format(**files) in err, err
    assert not os.path.exists(os.path.join(files["tmp"], "run")), "a config that fails validation left a run dir"


def test_an_empty_config_file_means_the_defaults(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing to override\n")
    assert cli.main(["train", "--config", str(empty), "--print-config"]) == 0
    default = capsys.readouterr().out
    assert cli.main(["train", "--print-config"]) == 0
    assert capsys.readouterr().out == default


def test_no_validation_split_is_said_with_select_on_last(capsys):
    assert cli.main(["train", "--set", "data.val_fraction=0", "--set", "checkpoint.select_on=last",
                     "--print-config"]) == 0
    assert "val_fraction: 0" in capsys.readouterr().out


def test_a_section_naming_no_component_is_the_declared_one(capsys):
    """`--set student={}` is the method's student with its defaults (it lost its options, and so
    did not resolve to itself once saved)."""
    from kdkit.config import resolve_method_config

    assert resolve_method_config("kd", sets=["student={}"]) == resolve_method_config("kd")
    assert resolve_method_config("kd", sets=["teachers=[{}]"]) == resolve_method_config("kd")


def test_the_method_key_may_repeat_the_method_option(capsys):
    """A run's saved config.yaml names its method: passing it back with the same --method is fine."""
    assert cli.main(["train", "--method", "dkd", "--set", "method=dkd", "--print-config"]) == 0
    assert "method: dkd" in capsys.readouterr().out


def test_help_config_does_not_need_the_weights_file(capsys):
    assert cli.main(["train", "--method", "kd", "--help-config", "--set", "student.pretrained=/no/such.pt"]) == 0
    assert "student.pretrained" in capsys.readouterr().out


def test_eval_does_not_need_the_weights_a_run_started_from(tmp_path):
    """`kdkit eval` reads the run's checkpoints; a moved `pretrained` file is no error there."""
    from kdkit.engine import open_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: kd\nteachers: [{name: resnet8, train: false, pretrained: /gone/t.pt}]\n")
    ctx, _ = open_run(run)
    assert ctx.config["teachers"][0]["pretrained"] == "/gone/t.pt"


def test_a_sweep_plans_runs_whose_weights_an_earlier_cell_writes(tmp_path):
    """{cell:NAME} weights do not exist when the sweep is planned: checked when the run starts."""
    from kdkit.sweep import check_configs, load_sweep, plan

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(textwrap.dedent("""\
        seeds: [0]
        cells:
          - {name: teach, method: kd}
          - name: reuse
            method: kd
            set: {teachers.0.train: false, teachers.0.pretrained: "{cell:teach}/checkpoints/teacher.resnet14/best.pt"}
        """))
    configs = check_configs(plan(load_sweep(sweep_file), tmp_path / "out"))
    assert len(configs) == 2


@pytest.mark.parametrize("exc, status, line", [
    (OSError(28, "No space left on device", "/full/run/last.pt"), 2,
     "kdkit: error: No space left on device: /full/run/last.pt"),
    (OSError(30, "Read-only file system", "/ro/run"), 2, "kdkit: error: Read-only file system: /ro/run"),
    (BrokenPipeError(32, "Broken pipe"), 141, None),
])
def test_environment_errors_are_not_bugs(exc, status, line, monkeypatch, capsys):
    import types

    module = types.ModuleType("kdkit_test_failing_command")
    module.add_arguments = lambda parser: None

    def run(args):
        raise exc

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "failing", (module.__name__, "a command that fails"))
    monkeypatch.setattr(os, "dup2", lambda *a: None)  # the broken-pipe path must leave pytest's stdout alone
    assert cli.main(["failing"]) == status
    err = capsys.readouterr().err
    assert err == (f"{line}\n" if line else "")


# --- real processes: the exit status the shell sees ----------------------------------------

def _kdkit(*args, env=None, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("KDKIT_PLUGINS", None)
    return kdkit_prestarted.run([sys.executable, "-m", "kdkit", *args], capture_output=True, text=True, timeout=300,
                                env=full_env, cwd=cwd or REPO)


def test_process_exits_2_with_one_line_before_creating_the_run_dir(tmp_path):
    out = tmp_path / "run"
    proc = _kdkit("train", "--method", "kd", "--set", "train.lr=-0.1", "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr == "kdkit: error: config key train.lr: expected float in (0, inf), got -0.1\n"
    assert not out.exists()


def test_process_bug_exits_1_with_traceback_and_a_report_line(tmp_path):
    (tmp_path / "kdkit_test_broken_command.py").write_text(
        "def add_arguments(parser):\n    pass\n\ndef run(args):\n    return {}['missing']\n")
    code = ("import sys; from kdkit import cli; "
            "cli.COMMANDS['broken'] = ('kdkit_test_broken_command', 'a command with a bug'); "
            "sys.exit(cli.main(['broken']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO])))
    assert proc.returncode == 1
    lines = proc.stderr.rstrip("\n").splitlines()
    assert lines[0] == "Traceback (most recent call last):" and lines[-2] == "KeyError: 'missing'"
    assert lines[-1] == cli.BUG_REPORT


def test_a_data_root_under_an_unknown_user_is_not_found_not_a_crash(tmp_path, capsys):
    # The dataset is opened when the run starts (after its first log line), so this is no table row.
    out = tmp_path / "run"
    code = cli.main(["train", "--method", "kd", "--out", str(out), "--set", "data.name=fashion_mnist",
                     "--set", "data.root=~kdkit_no_such_user/fm"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("kdkit: error: Fashion-MNIST train split not found")
    assert "in ~kdkit_no_such_user/fm" in last and not out.exists()
