"""tests/engine/kdkit_prestarted.py, which many end-to-end tests start their kdkit commands with: a forked
command must be what ``python -m kdkit`` is to its caller (streams, exit status, environment, working
directory, PYTHONPATH plugins, signals, session, thread count), and what it prints must be what a fresh
interpreter prints."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import kdkit_prestarted
import pytest
from kdkit_engine_testutil import subprocess_env

KDKIT = [sys.executable, "-m", "kdkit"]
PROBE = '''
import os, sys, torch, kdkit

@kdkit.hookimpl
def kdkit_register_students(register):
    print("probe", os.getcwd(), os.environ.get("KDTEST_PROBE"), torch.get_num_threads(), os.getpid(),
          os.getsid(0), sys.argv[0].endswith(os.path.join("kdkit", "__main__.py")), flush=True)
'''


def test_a_forked_command_prints_and_exits_as_a_fresh_one(tmp_path):
    for args in (["train", "--set", "train.lr=-1", "--out", str(tmp_path / "run")], ["plugins"], ["--version"],
                 ["train", "--method", "nope", "--print-config"]):
        env = subprocess_env()
        forked = kdkit_prestarted.run([*KDKIT, *args], env=env, capture_output=True, text=True, timeout=300)
        fresh = subprocess.run([*KDKIT, *args], env=env, capture_output=True, text=True, timeout=300)
        assert isinstance(forked, subprocess.CompletedProcess)
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert not (tmp_path / "run").exists()


RAISER = '''
import kdkit

class Escaped(BaseException):  # not an Exception: kdkit's CLI lets it through
    pass

@kdkit.hookimpl
def kdkit_register_students(register):
    raise Escaped("out")
'''


def test_an_exception_out_of_the_command_ends_it_as_a_fresh_interpreter_ends(tmp_path):
    (tmp_path / "kdkit_prestarted_raiser.py").write_text(RAISER)
    env = subprocess_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    args = [*KDKIT, "--plugins-module", "kdkit_prestarted_raiser", "plugins"]
    forked = kdkit_prestarted.run(args, env=env, capture_output=True, text=True, timeout=300)
    fresh = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert forked.returncode == fresh.returncode == 1, (forked.stderr, fresh.stderr)
    # the traceback (its frames above the command differ: runpy's, this module's)
    assert forked.stderr.startswith("Traceback") and fresh.stderr.startswith("Traceback"), forked.stderr
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == "kdkit_prestarted_raiser.Escaped: out"


def test_environment_working_directory_plugins_threads_and_session_are_the_callers(tmp_path):
    (tmp_path / "kdkit_prestarted_probe.py").write_text(PROBE)
    work = tmp_path / "work"
    work.mkdir()
    env = subprocess_env(KDTEST_PROBE="hello", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    for session in (False, True):
        proc = kdkit_prestarted.Popen([*KDKIT, "--plugins-module", "kdkit_prestarted_probe", "plugins"], env=env,
                                      cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=session)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        probe = next(line.split() for line in out.splitlines() if line.startswith("probe "))
        assert probe[1:4] == [str(work), "hello", "1"]
        assert int(probe[4]) == proc.pid != os.getpid()
        assert (int(probe[5]) == proc.pid) is session  # its own session only when asked
        assert probe[6] == "True"


def test_signals_reach_it_and_its_status_says_so(tmp_path):
    args = [*KDKIT, "train", "--method", "kd", "--out", str(tmp_path / "run"), "--set", "data.name=shapes",
            "--set", "train.epochs=100", "--set", "logging.progress=false"]
    proc = kdkit_prestarted.Popen(args, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "kdkit-run.json").exists():  # started training
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.1)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stderr.close()


def test_a_shell_runs_the_forked_kdkit_with_its_streams_and_status(tmp_path):
    env = dict(subprocess_env(), PATH=os.pathsep.join([kdkit_prestarted.bin_directory(), os.environ["PATH"]]))
    script = "kdkit train --set train.lr=-1 --out run || echo status $?; kdkit --version | wc -l"
    proc = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.stdout.split("\n")[:2] == ["status 2", "1"], proc.stdout
    assert proc.stderr == "kdkit: error: config key train.lr: expected float in (0, inf), got -1.0\n"


RUN_PROBE = '''
import json, os, kdkit

@kdkit.hookimpl
def kdkit_configure(config, run_dir):
    with open(f"/proc/{os.getppid()}/stat") as fh:
        grandparent = int(fh.read().rsplit(")", 1)[1].split()[1])
    with open(os.environ["KDTEST_RUN_PROBE"], "w") as fh:
        json.dump({"pid": os.getpid(), "parent": os.getppid(), "grandparent": grandparent, "group": os.getpgrp()}, fh)
'''


def test_the_runs_of_a_forked_sweep_are_forks_in_the_sweeps_process_group(tmp_path):
    from kdkit_sweep_testutil import start_sweep

    (tmp_path / "kdkit_prestarted_run_probe.py").write_text(RUN_PROBE)
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("name: probe\nseeds: [0]\ncells: [{name: kd, method: kd}]\nbase: {data.name: shapes, "
                   "data.train_per_class: 4, data.test_per_class: 2, teachers: [{name: convnet, width: 4}], "
                   "student.name: convnet, student.width: 4, teacher_train.epochs: 1, train.epochs: 1, "
                   "logging.progress: false}\n")
    env = subprocess_env(KDTEST_RUN_PROBE=str(tmp_path / "probe.json"))
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    sweep = kdkit_prestarted.Popen([*KDKIT, "--plugins-module", "kdkit_prestarted_run_probe", "sweep", str(cfg),
                                    "--out", str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    run = json.loads((tmp_path / "probe.json").read_text())
    # a fork of the sweep's copy of the server (a fresh interpreter's parent would be the sweep itself),
    # in the sweep's own process group: killpg of the sweep reaches it
    assert run["parent"] != sweep.pid and run["grandparent"] == sweep.pid, run
    assert run["group"] == sweep.pid, run
    assert "1/1 run(s) done" in err, err


SCRIPT = '''
import os, sys
here = os.path.dirname(os.path.realpath(__file__))
print(sys.argv, __name__, __file__ == sys.argv[0], sys.path[0] == here, os.getcwd(), os.environ.get("KDTEST_PROBE"))
import helper_next_to_the_script  # found as python SCRIPT finds it: in the script's folder
if sys.argv[1:] == ["fail"]:
    raise ValueError("from the script")
sys.exit(int(sys.argv[1]))
'''


@pytest.mark.parametrize("args", [["0"], ["3"], ["fail"]])
def test_a_forked_script_runs_and_exits_as_python_script_does(tmp_path, args):
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "probe_script.py").write_text(SCRIPT)
    (folder / "helper_next_to_the_script.py").write_text("print('helper imported')\n")
    argv = [sys.executable, str(folder / "probe_script.py"), *args]
    env = dict(os.environ, KDTEST_PROBE="seen")
    forked = kdkit_prestarted.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
    assert not isinstance(forked, subprocess.Popen)  # forked, not a subprocess
    out, err = forked.communicate(timeout=120)
    fresh = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (forked.returncode, out) == (fresh.returncode, fresh.stdout)
    assert " __main__ True True " in out and "seen" in out and "helper imported" in out
    if args == ["fail"]:  # the traceback's last lines (the frames above the script differ: runpy's)
        assert forked.returncode == 1 and err.splitlines()[-1] == fresh.stderr.splitlines()[-1]
        assert err.splitlines()[-1] == "ValueError: from the script"
    else:
        assert err == fresh.stderr == "" and forked.returncode == int(args[0])


def test_other_commands_are_plain_subprocesses():
    proc = kdkit_prestarted.Popen([sys.executable, "-c", "print(1)"], stdout=subprocess.PIPE)
    assert type(proc) is subprocess.Popen
    assert proc.communicate(timeout=60)[0].strip() == b"1"
    relative = kdkit_prestarted.run([sys.executable, os.path.relpath(__file__), "--help"], capture_output=True,
                                    timeout=60)  # a script by a relative path: a subprocess (then not a test)
    assert isinstance(relative, subprocess.CompletedProcess)
    run = kdkit_prestarted.run([*KDKIT, "--version"], capture_output=True, preexec_fn=os.getpid, timeout=300)
    assert run.returncode == 0  # an option the fork does not carry over: a real subprocess
