"""The docs cannot rot (issue 19, item 7): the site builds, and every command block runs.

* ``mkdocs build --strict`` builds the site from ``mkdocs.yml`` (the API reference generated from the
  docstrings included) with no warning, every page of ``docs/`` is in the nav and every public name has its
  section in the API reference.
* Every fenced ``bash`` / ``sh`` / ``shell`` / ``console`` / ``python`` block of ``README.md`` and
  ``docs/**/*.md`` is run here, from a mirror of the repository root (so ``.venv/bin/kdkit``,
  ``configs/...`` and ``scripts/...`` resolve, and files a block writes land in a temporary directory),
  with the venv's ``bin`` first on ``PATH``.  ``console`` blocks run their ``$ `` lines (output lines are a
  record, not checked); ``python`` blocks run in a subprocess with the venv's python.  A block that is not
  to be run says so on the line right before its fence::

      <!-- docs-test: skip (REASON) -->
      <!-- docs-test: config-only (REASON) -->

  ``skip``: not run here (needs a GPU, data or weights that are not here, a long run covered by a named
  test, ...).  ``config-only``: a long training run whose commands are checked without training — every
  ``kdkit train`` command of the block is resolved with ``--print-config`` (the whole config validated:
  method, keys, types, ranges), all of them in one process; the block may run no other program.  The
  reason is required.  A marker with no reason or an unknown mode, a marker not right before a fence, a
  marker on a block that is never run, a command transcript without a language, or a block that fails
  to run fails the suite.
* README's results table is docs/methods.md's table, figure for figure.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import kdkit_prestarted
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

SHELL_LANGS = {"bash", "sh", "shell"}
CONSOLE_LANGS = {"console", "shell-session"}
PYTHON_LANGS = {"python", "py", "python3"}
RUN_LANGS = SHELL_LANGS | CONSOLE_LANGS | PYTHON_LANGS
MODES = ("skip", "config-only")

FENCE = re.compile(r"^(?P<indent> {0,3}|\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+.-]*)[^\n`]*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:(?P<body>.*?)-->\s*$")
MARKER_BODY = re.compile(r"^\s*(?P<mode>[\w-]+)\s*\((?P<reason>.*)\)\s*$")
COMMANDISH = re.compile(r"^\s*(\$ |kdkit |python |bash |pip |torchrun |\.venv/bin/)")
BLOCK_TIMEOUT = 300


@dataclasses.dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mode: str  # "run", "skip" or "config-only"
    reason: str = ""

    @property
    def where(self) -> str:
        try:
            rel = self.path.relative_to(ROOT)
        except ValueError:
            rel = self.path
        return f"{rel}:{self.line}"


def parse_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The runnable-language blocks of a Markdown file (with their markers) and the marker problems."""
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        rel = path.relative_to(ROOT)
    except ValueError:
        rel = path
    blocks, problems = [], []
    pending = None  # (line number, mode, reason) of a marker waiting for its fence
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        fence = FENCE.match(line)
        if marker:
            if pending:
                problems.append(f"{rel}:{pending[0]}: docs-test marker is not right before a fence")
            body = MARKER_BODY.match(marker.group("body"))
            if not body or body.group("mode") not in MODES:
                problems.append(f"{rel}:{i + 1}: docs-test marker must read 'skip (REASON)' or "
                                f"'config-only (REASON)', got {marker.group('body').strip()!r}")
                pending = (i + 1, None, "")
            elif not body.group("reason").strip():
                problems.append(f"{rel}:{i + 1}: docs-test {body.group('mode')} marker gives no reason")
                pending = (i + 1, None, "")
            else:
                pending = (i + 1, body.group("mode"), body.group("reason").strip())
            i += 1
            continue
        if not fence:
            if pending:  # text, or a blank line, between a marker and its fence
                problems.append(f"{rel}:{pending[0]}: docs-test marker is not right before a fence")
                pending = None
            i += 1
            continue
        indent, ticks, lang = len(fence.group("indent")), fence.group("fence"), fence.group("lang").lower()
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(ticks[0])}{{{len(ticks)},}}\s*$", lines[j]):
            j += 1
        body_lines = [ln[indent:] if ln[:indent].strip() == "" else ln.lstrip() for ln in lines[i + 1:j]]
        text = "\n".join(body_lines) + "\n"
        if lang in RUN_LANGS:
            mode, reason = ("run", "") if pending is None else (pending[1], pending[2])
            if mode is not None:
                blocks.append(Block(path, i + 1, lang, text, mode, reason))
        else:
            if pending is not None:
                problems.append(f"{rel}:{pending[0]}: docs-test marker on a {lang or 'plain'} block, "
                                f"which is never run")
            first = next((ln for ln in body_lines if ln.strip()), "")
            if lang in ("", "text", "txt", "plain") and COMMANDISH.match(first):
                problems.append(f"{rel}:{i + 1}: a command block needs its language "
                                f"(```bash, or ```console for a transcript): {first.strip()[:60]!r}")
        pending = None
        i = j + 1
    if pending:
        problems.append(f"{rel}:{pending[0]}: docs-test marker is not right before a fence")
    return blocks, problems


def console_commands(text: str) -> list[str]:
    """The commands of a console transcript: each ``$ `` line with its continuation lines."""
    commands, current = [], None
    for line in text.split("\n"):
        if current is not None:
            current += "\n" + line
        elif line.startswith("$ "):
            current = line[2:]
        else:
            continue  # output
        try:
            shlex.split(current)
            complete = not current.rstrip().endswith("\\")
        except ValueError:  # an open quote: the command goes on
            complete = False
        if complete:
            commands.append(current)
            current = None
    if current is not None:
        commands.append(current)
    return commands


def shell_script(block: Block) -> str:
    if block.lang in CONSOLE_LANGS:
        return "\n".join(console_commands(block.text)) + "\n"
    return block.text


# One python per test process resolves the config-only blocks' commands, request by request (a JSON list of
# argument lists per line on stdin, one result line each on stdout): a `kdkit train --print-config` is ~0.1 s
# once torch is imported, and importing it for each of the ~30 blocks cost about 3.5 s a block.  Every command
# starts from a plugin manager built anew, as a fresh process would.
CONFIG_SERVER = r"""
import contextlib, io, json, sys
from kdkit import cli
from kdkit.plugins import reset_plugin_manager
reply = sys.stdout
for request in sys.stdin:
    failed, err = [], io.StringIO()
    for argv in json.loads(request):
        reset_plugin_manager()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code
        if code not in (0, None):
            failed.append(f"kdkit {' '.join(argv)}: exit status {code}")
    reply.write("DOCS-TEST-RESULT " + json.dumps({"failed": failed, "stderr": err.getvalue()[-3000:]}) + "\n")
    reply.flush()
"""


class ConfigChecker:
    """The config-only blocks' python (CONFIG_SERVER), started on first use, again after a crash; its own
    stderr (what bypasses the per-command capture) goes to a file in ``work``, and a request that takes
    longer than BLOCK_TIMEOUT kills it."""

    def __init__(self, cwd: Path, env: dict, work: Path):
        self.cwd, self.env, self.stderr_path, self.proc = cwd, env, work / "config-server.stderr", None

    def check(self, argvs: list) -> tuple[list | None, str]:
        """(failed commands, stderr), or (None, what crashed)."""
        if self.proc is None or self.proc.poll() is not None:
            with open(self.stderr_path, "wb") as stderr:
                self.proc = subprocess.Popen([sys.executable, "-c", CONFIG_SERVER], cwd=self.cwd, env=self.env,
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                             text=True)
        timer = threading.Timer(BLOCK_TIMEOUT, self.proc.kill)
        timer.start()
        try:
            self.proc.stdin.write(json.dumps(argvs) + "\n")
            self.proc.stdin.flush()
            for line in self.proc.stdout:
                if line.startswith("DOCS-TEST-RESULT "):
                    result = json.loads(line.split(" ", 1)[1])
                    return result["failed"], result["stderr"]
        except BrokenPipeError:
            pass
        finally:
            timer.cancel()
        self.close()
        stderr = self.stderr_path.read_text(errors="replace")[-3000:]
        return None, f"exit status {self.proc.returncode} (killed after {BLOCK_TIMEOUT} s if -9)\n--- stderr\n{stderr}"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _env(work: Path) -> dict:
    env = dict(os.environ)
    # `kdkit` first from kdkit_prestarted's directory: each command is a fork of a process that has already
    # imported torch (3-5 s of CPU less per command), otherwise what .venv/bin/kdkit does
    env["PATH"] = os.pathsep.join([kdkit_prestarted.bin_directory(), str(VENV_BIN), env.get("PATH", "")])
    env["KDKIT_CACHE_DIR"] = str(work / "cache")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["MPLBACKEND"] = "Agg"
    return env


def _tail(proc) -> str:
    return f"exit status {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def _recorded_argvs(record: Path) -> list[list[str]]:
    fields = record.read_bytes().decode().split("\0") if record.exists() else []
    argvs, k = [], 0
    while k < len(fields) - 1:
        n = int(fields[k])
        argvs.append(fields[k + 1:k + 1 + n])
        k += 1 + n
    return argvs


def run_block(block: Block, mirror: Path, work: Path, configs: ConfigChecker) -> str | None:
    """Run one block; None when it worked, else what went wrong."""
    work.mkdir(parents=True, exist_ok=True)
    env = _env(work)
    if block.lang in PYTHON_LANGS:
        script = work / "block.py"
        script.write_text(block.text)
        # as `python block.py`, forked from kdkit_prestarted's process that has torch imported already
        proc = kdkit_prestarted.run([sys.executable, str(script)], cwd=mirror, env=env, capture_output=True,
                                    text=True, timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL)
        return None if proc.returncode == 0 else f"{block.where}: python block failed: {_tail(proc)}"
    script = shell_script(block)
    if block.mode == "run":
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=mirror, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL)
        return None if proc.returncode == 0 else f"{block.where}: {block.lang} block failed: {_tail(proc)}"
    # config-only: the shell runs the block with `kdkit` recording its arguments and no other program
    # on PATH (but mktemp, for `VAR=$(mktemp -d) kdkit ...`); then one python resolves every config.
    record, safe_bin = work / "argv.record", work / "safe-bin"
    safe_bin.mkdir(exist_ok=True)
    mktemp = shutil.which("mktemp")
    if mktemp and not (safe_bin / "mktemp").exists():
        (safe_bin / "mktemp").symlink_to(mktemp)
    prelude = (f"kdkit() {{ printf '%s\\0' \"$#\" \"$@\" >> {shlex.quote(str(record))}; }}\n"
               f"PATH={shlex.quote(str(safe_bin))}\n")
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", prelude + script], cwd=mirror, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        return (f"{block.where}: config-only block failed in the shell (it may run only `kdkit train` "
                f"commands): {_tail(proc)}")
    argvs = _recorded_argvs(record)
    if not argvs:
        return f"{block.where}: config-only block runs no kdkit command"
    for argv in argvs:
        if not argv or argv[0] != "train":
            return f"{block.where}: config-only block runs `kdkit {' '.join(argv)}`, not `kdkit train ...`"
        if not {"--print-config", "--help-config", "--help", "-h"} & set(argv):
            argv.append("--print-config")
    failed, stderr = configs.check(argvs)
    if failed is None:
        return f"{block.where}: config-only check crashed: {stderr}"
    if failed:
        return f"{block.where}: config-only block: " + "; ".join(failed) + f"\n--- stderr\n{stderr}"
    return None


def _all_blocks() -> tuple[list[Block], list[str]]:
    blocks, problems = [], []
    for path in DOC_FILES:
        found, bad = parse_blocks(path)
        blocks += found
        problems += bad
    return blocks, problems


BLOCKS, PROBLEMS = _all_blocks()
RUNNABLE = [b for b in BLOCKS if b.mode != "skip"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """The repository root's entries, linked into a temporary directory the blocks run in."""
    root = tmp_path_factory.mktemp("repo-mirror")
    for entry in ROOT.iterdir():
        if entry.name != ".git":
            (root / entry.name).symlink_to(entry)
    return root


@pytest.fixture(scope="module")
def configs(mirror, tmp_path_factory):
    work = tmp_path_factory.mktemp("config-checks")
    checker = ConfigChecker(mirror, _env(work), work)
    yield checker
    checker.close()


# --- the site --------------------------------------------------------------------------------------

def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install --no-build-isolation -e '.[dev]' installs it")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, _tail(proc)
    # every public name has its section in the API reference
    for module_name, page in (("kdkit", "kdkit"), ("kdkit.distill", "distill"), ("kdkit.ops", "ops")):
        html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
        missing = [name for name in importlib.import_module(module_name).__all__
                   if f"<code>{module_name}.{name}</code>" not in html]
        assert not missing, f"the API reference of {module_name} lacks {missing}"


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from (pages(value) if isinstance(value, list) else [value])

    in_nav = set(pages(config["nav"]))
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in DOC_FILES if p.parent != ROOT}
    assert on_disk - in_nav == set(), f"pages missing from mkdocs.yml's nav: {sorted(on_disk - in_nav)}"
    assert in_nav - on_disk == set(), f"nav entries with no page: {sorted(in_nav - on_disk)}"


# --- the blocks ------------------------------------------------------------------------------------

def test_every_block_is_run_or_marked():
    assert not PROBLEMS, "\n".join(PROBLEMS)
    assert RUNNABLE, "no runnable block found: the parser is broken"
    for block in BLOCKS:
        assert block.mode in ("run", *MODES), block


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where for b in RUNNABLE])
def test_docs_block_runs(block, mirror, configs, tmp_path):
    failure = run_block(block, mirror, tmp_path, configs)
    assert failure is None, failure


FAKE = '''# A page that rotted

```bash
kdkit train --method no_such_method --print-config
```

<!-- docs-test: skip () -->
```python
print("never run")
```

<!-- docs-test: skip (a reason, but no fence follows) -->
Some text.

<!-- docs-test: sometimes (not a mode) -->
```bash
true
```

<!-- docs-test: skip (yaml is never run) -->
```yaml
a: 1
```

```
$ kdkit info
```

```python
raise SystemExit("this block is broken")
```

<!-- docs-test: config-only (a long run) -->
```console
$ kdkit train --method kd --set train.lr=-1
output that is not checked
```

<!-- docs-test: config-only (a long run) -->
```bash
kdkit train --method kd
pip install something
```

<!-- docs-test: skip (needs a GPU) -->
```bash
exit 1
```
'''


def test_the_checker_reports_unmarked_broken_and_badly_marked_blocks(tmp_path, mirror, configs):
    page = tmp_path / "rotten.md"
    page.write_text(FAKE)
    blocks, problems = parse_blocks(page)
    text = "\n".join(problems)
    assert ":7: docs-test skip marker gives no reason" in text, text
    assert ":12: docs-test marker is not right before a fence" in text, text
    assert ":15: docs-test marker must read" in text, text
    assert ":20: docs-test marker on a yaml block, which is never run" in text, text
    assert ":25: a command block needs its language" in text, text
    assert len(problems) == 5, text
    by_line = {b.line: b for b in blocks}
    assert by_line[3].mode == "run" and by_line[29].mode == "run"
    assert by_line[34].mode == "config-only" and by_line[46].mode == "skip" and by_line[46].reason == "needs a GPU"
    failures = {line: run_block(by_line[line], mirror, tmp_path / str(line), configs) for line in (3, 29, 34, 40)}
    assert "unknown method 'no_such_method'" in failures[3], failures[3]
    assert "this block is broken" in failures[29], failures[29]
    assert "kdkit train --method kd --set train.lr=-1 --print-config: exit status 2" in failures[34], failures[34]
    assert "it may run only `kdkit train`" in failures[40] and "pip" in failures[40], failures[40]


def test_console_commands_follow_continuations_and_quotes():
    text = ("$ kdkit train --method kd \\\n    --set a=1\noutput\n$ kdkit train --set 'x=[1,\n    2]'\n"
            "more output\n")
    assert console_commands(text) == ["kdkit train --method kd \\\n    --set a=1", "kdkit train --set 'x=[1,\n    2]'"]


# --- the front page's table ------------------------------------------------------------------------

def _table_rows(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("| ") and " ± " in ln]


def test_readme_table_is_the_methods_table():
    readme = _table_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    methods = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    methods = methods[methods.index("<!-- table:start -->"):methods.index("<!-- table:end -->")]
    assert readme and readme == _table_rows(methods)


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    assert "bash scripts/setup.sh && .venv/bin/kdkit train --method wordnet_relax" in readme
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest" in readme
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
