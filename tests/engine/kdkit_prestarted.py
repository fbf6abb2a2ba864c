"""``python -m kdkit ...`` (and torchrun) for the tests, forked from a process that has already imported torch.

Why: most end-to-end tests start ``python -m kdkit`` to see what a user sees (exit status, stderr
lines, files written, signals, locks, process groups), and each such interpreter spends 3-5 s of CPU
importing torch and torch._dynamo before about a second of work: on 2 cores that was over half the
suite's time.  Here one *prestarted* server per pytest worker imports them once; each command is a
``fork()`` of it that runs ``kdkit/__main__.py`` as ``python -m kdkit`` does (:func:`runpy.run_module`),
with the caller's argv, environment, working directory, standard streams (handed over as file
descriptors) and, on request, a session of its own.  It is a real process: the caller gets its pid,
can signal or SIGKILL it, and gets its exit status (``-N`` when a signal ended it), as from
:class:`subprocess.Popen`.  :mod:`multiprocessing`'s forkserver preloads modules the same way, but it
runs pickled Python callables and hands over neither the caller's streams nor its session, hence this
module.

:func:`run` and :class:`Popen` take the same arguments as their :mod:`subprocess` namesakes and fork
only ``[sys.executable, "-m", "kdkit", ...]`` (or torchrun's ``-m torch.distributed.run``), or a Python
script given by its absolute path (``[sys.executable, "/path/to/script.py", ...]``: the documentation's
examples, the repository's scripts; run as ``python script.py`` runs it, by :func:`runpy.run_path`), without
options this module does not carry over (e.g. ``preexec_fn``); anything else goes to :mod:`subprocess`
unchanged, and so does everything under ``KDKIT_TEST_FRESH=1``.

What a forked command cannot show, so the tests of these start a fresh interpreter themselves:
import-time behaviour (lazy imports, anything printed while torch is imported: the server refuses to
start if its imports print anything), settings a library reads when it loads (libgomp reads ``OMP_*``
then: ``OMP_NUM_THREADS`` is applied with ``torch.set_num_threads``; the server runs with kdkit's own
``GOMP_SPINCOUNT``), and another torch or numpy on ``PYTHONPATH``.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

#: imported once by the server (what a kdkit command spends its start-up on)
PRELOAD = ("numpy", "torch", "torch._dynamo", "torchvision", "PIL.Image")
#: the modules a forked command may run as ``python -m MODULE``: kdkit, and torchrun's launcher (whose
#: workers, started as ``--no-python kdkit`` with :func:`bin_directory` first on PATH, are forked too)
MODULES = ("kdkit", "torch.distributed.run")
#: subprocess options a forked command carries over (the rest: a real subprocess)
_CARRIED = {"env", "cwd", "stdin", "stdout", "stderr", "text", "universal_newlines", "start_new_session",
            "capture_output", "timeout", "input", "check", "close_fds", "encoding", "errors"}
_MAX_PACKET = 1 << 20


def _forkable(argv, kwargs) -> bool:
    if not (isinstance(argv, (list, tuple)) and len(argv) >= 2 and argv[0] == sys.executable
            and set(kwargs) <= _CARRIED and not fresh_only() and all(isinstance(a, (str, os.PathLike)) for a in argv)):
        return False
    return (len(argv) >= 3 and argv[1] == "-m" and argv[2] in MODULES) or _script(argv) is not None


def _script(argv) -> str | None:
    """The script of ``[sys.executable, "/ABSOLUTE/SCRIPT.py", ...]`` (an existing file), else None."""
    first = os.fspath(argv[1])
    return first if os.path.isabs(first) and first.endswith(".py") and os.path.isfile(first) else None


def fresh_only() -> bool:
    """``KDKIT_TEST_FRESH=1``: every command a fresh interpreter, as before this module (a check that the
    suite passes the same way)."""
    return os.environ.get("KDKIT_TEST_FRESH", "") == "1"


# --- the caller's side --------------------------------------------------------------------------

class _Server:
    """The pytest worker's connection to its server (started on first use, restarted if it died)."""

    def __init__(self, attached: socket.socket | None = None):
        self.sock = attached  # attached: a connection to a forking process that is already there
        self.attached = attached is not None
        self.proc = None
        self.exits: dict[int, int] = {}
        self.next_id = 0

    def _start(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="kdkit-prestarted-")
        self.path = os.path.join(self.directory, "socket")
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTEST_CURRENT_TEST")}
        if "OMP_WAIT_POLICY" not in env:
            from kdkit.runtime import OPENMP_SPIN  # what kdkit's CLI sets before torch loads
            env.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", self.path], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, cwd="/")
        deadline = time.monotonic() + 300
        while not os.path.exists(self.path):  # bound once the preloading is done and printed nothing
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError("the prestarted kdkit server did not start: "
                                   + self.log.read().decode(errors="replace")[-4000:])
            time.sleep(0.05)
        self.sock = _connect(self.path)
        self.exits.clear()

    def bin_directory(self) -> str:
        """A directory with a ``kdkit`` that runs its command in a fork of this server (for shells)."""
        if self.sock is None or self.proc.poll() is not None:
            self._start()
        shim = os.path.join(self.directory, "bin", "kdkit")
        if not os.path.exists(shim):
            os.makedirs(os.path.dirname(shim), exist_ok=True)
            with open(shim, "w") as fh:
                fh.write(f"#!/bin/sh\nKDKIT_PRESTARTED_SOCKET={self.path} exec {sys.executable} -S "
                         f"{os.path.abspath(__file__)} --client \"$@\"\n")
            os.chmod(shim, 0o755)
        return os.path.dirname(shim)

    def _receive(self, timeout: float | None) -> dict:
        self.sock.settimeout(timeout)
        data = self.sock.recv(_MAX_PACKET)  # socket.timeout past ``timeout``
        if not data and self.attached:
            raise RuntimeError("the sweep's forking copy of the prestarted kdkit server ended")
        if not data:
            self.log.seek(0)
            output = self.log.read().decode(errors="replace")[-4000:]
            self.sock = None
            raise RuntimeError(f"the prestarted kdkit server ended: {output}")
        message = json.loads(data)
        if "exited" in message:
            self.exits[message["exited"]] = message["returncode"]
        return message

    def start(self, argv, env, cwd, fds, new_session: bool) -> int:
        if not self.attached and (self.sock is None or self.proc.poll() is not None):
            self._start()
        self.next_id += 1
        script = _script(argv)
        command = {"script": script, "args": [os.fspath(a) for a in argv[2:]]} if script else \
            {"module": argv[2], "args": [os.fspath(a) for a in argv[3:]]}
        request = {"id": self.next_id, **command, "env": env, "cwd": cwd, "new_session": new_session}
        socket.send_fds(self.sock, [json.dumps(request).encode()], fds)
        while True:
            message = self._receive(timeout=60)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"the prestarted kdkit server could not fork: {message['error']}")
                return message["pid"]

    def poll(self, pid: int) -> int | None:
        while pid not in self.exits:
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                return None
            self._receive(timeout=None)
        return self.exits[pid]

    def wait(self, pid: int, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self.exits:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                self._receive(timeout=left)
            except socket.timeout:
                raise TimeoutError from None
        return self.exits[pid]

    def close(self) -> None:
        if self.proc is not None:
            self.log.close()
            self.proc.terminate()  # its commands go on, as a subprocess's would
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.directory, ignore_errors=True)
            self.proc = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    return sock


def bin_directory() -> str:
    """A directory holding a ``kdkit`` for shells: put it first on ``PATH`` and every ``kdkit ...`` a
    shell runs is a fork of this pytest worker's server (its stdin, stdout and stderr, environment and
    working directory are the shell's; SIGINT, SIGTERM and SIGHUP are passed on; its exit status is
    the command's)."""
    return _server.bin_directory()


_server = _Server()
atexit.register(_server.close)


class Popen:
    """:class:`subprocess.Popen` for ``[sys.executable, "-m", MODULE, ...]`` (:data:`MODULES`), forked (see
    the module docs); any other command is a :class:`subprocess.Popen`, returned as is."""

    def __new__(cls, args, **kwargs):
        if not _forkable(args, kwargs):
            return subprocess.Popen(args, **kwargs)
        return super().__new__(cls)

    def __init__(self, args, *, env=None, cwd=None, stdin=None, stdout=None, stderr=None, text=False,
                 universal_newlines=False, start_new_session=False, close_fds=True, encoding=None, errors=None):
        self.args = args
        self.returncode = None
        text = bool(text or universal_newlines or encoding or errors)
        ours, theirs, to_close = [], [], []
        for target, spec in ((0, stdin), (1, stdout), (2, stderr)):
            mine = None
            if spec is None:
                fd = target
            elif spec == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                to_close.append(fd)
            elif spec == subprocess.PIPE:
                read, write = os.pipe()
                fd, mine = (read, write) if target == 0 else (write, read)
                to_close.append(fd)
            elif spec == subprocess.STDOUT and target == 2:
                fd = theirs[1]
            elif isinstance(spec, int):
                fd = spec
            else:
                fd = spec.fileno()
            theirs.append(fd)
            ours.append(mine)
        try:
            self.pid = _server.start(args, dict(os.environ if env is None else env),
                                     os.fspath(cwd) if cwd is not None else os.getcwd(), theirs,
                                     start_new_session)
        finally:
            for fd in to_close:
                os.close(fd)
        mode = dict(encoding=encoding or "utf-8", errors=errors or "strict") if text else {}
        self.stdin = os.fdopen(ours[0], "w" if text else "wb", **mode) if ours[0] is not None else None
        self.stdout = os.fdopen(ours[1], "r" if text else "rb", **mode) if ours[1] is not None else None
        self.stderr = os.fdopen(ours[2], "r" if text else "rb", **mode) if ours[2] is not None else None

    def poll(self):
        if self.returncode is None:
            self.returncode = _server.poll(self.pid)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            try:
                self.returncode = _server.wait(self.pid, timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self):
        self.send_signal(15)

    def kill(self):
        self.send_signal(9)

    def communicate(self, input=None, timeout=None):
        """Both output pipes read to their end (and ``input`` written), then the exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        streams = {s.fileno(): (s, []) for s in (self.stdout, self.stderr) if s is not None and not s.closed}
        while streams:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            ready, _, _ = select.select(list(streams), [], [], left)
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    streams[fd][1].append(chunk)
                else:
                    stream, chunks = streams.pop(fd)
                    stream.chunks = chunks
        out = self._collected(self.stdout)
        err = self._collected(self.stderr)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return out, err

    @staticmethod
    def _collected(stream):
        if stream is None:
            return None
        data = b"".join(getattr(stream, "chunks", []))
        text = "b" not in stream.mode
        stream.close()
        return data.decode(stream.encoding, stream.errors) if text else data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for s in (self.stdin, self.stdout, self.stderr):
            if s is not None and not s.closed:
                s.close()
        self.wait()


def run(args, *, input=None, capture_output=False, timeout=None, check=False, **kwargs):
    """:func:`subprocess.run` for ``[sys.executable, "-m", MODULE, ...]`` (:data:`MODULES`), forked (see the
    module docs); any other command is :func:`subprocess.run` itself."""
    if not _forkable(args, kwargs):
        return subprocess.run(args, input=input, capture_output=capture_output, timeout=timeout, check=check,
                              **kwargs)
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    proc = Popen(args, **kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


# --- the server's side ----------------------------------------------------------------------------

def _serve(path: str) -> None:
    """Preload, listen on ``path``, and fork one command per request (:func:`_fork_loop`)."""
    import ctypes
    import gc
    import importlib
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: end with the pytest worker that started it
    for name in PRELOAD:
        importlib.import_module(name)
    import torch

    default_threads = torch.get_num_threads()  # a fresh torch's, from the CPUs this process may use
    # the preloaded objects out of the collector's reach: a collection in a forked command would otherwise
    # write to (and so copy) every page holding them
    gc.collect()
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fstat(1).st_size or os.fstat(2).st_size:  # a fresh kdkit would print that too: not the same
        raise SystemExit("importing the preloaded modules printed something (see above)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    base_path = sys.path[1:]  # without this file's own directory: what a fresh interpreter starts from
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)  # the client waits for this name: bound and listening
    _fork_loop(listener, [], base_path, default_threads)


def _fork_loop(listener: socket.socket | None, clients: list[socket.socket], base_path: list[str],
               default_threads: int) -> None:
    """Fork one command per request of a client (and of each connection ``listener`` accepts); report its
    pid to the client that asked and, when it ends, its exit status.  Without a listener (a sweep's
    :func:`_runs_forked_from_here`), the loop ends when its one client is gone."""
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, the client that started it)
    while True:
        waited = [*clients, *children] + ([listener] if listener is not None else [])
        ready, _, _ = select.select(waited, [], [])
        for pidfd in [r for r in ready if r in children]:
            pid, client = children.pop(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(pid, 0)
            try:
                client.send(json.dumps({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode())
            except OSError:
                pass  # that client is gone
        if listener is not None and listener in ready:
            clients.append(listener.accept()[0])
        for client in [r for r in ready if r in clients]:
            try:
                data, fds, _, _ = socket.recv_fds(client, _MAX_PACKET, 3)
            except OSError:
                data, fds = b"", []
            if not data:
                clients.remove(client)
                client.close()
                if listener is None and not clients:
                    os._exit(0)  # the sweep has ended; its runs go on as a subprocess's would
                continue
            request = json.loads(data)
            try:
                pid = os.fork()
            except OSError as e:
                for f in fds:
                    os.close(f)
                client.send(json.dumps({"id": request["id"], "error": str(e)}).encode())
                continue
            if pid == 0:
                for fd in [*clients, *([listener] if listener is not None else [])]:
                    fd.close()
                for pidfd in children:
                    os.close(pidfd)
                _become_command(request, fds, base_path, default_threads)  # does not return
            for f in fds:
                os.close(f)
            children[os.pidfd_open(pid)] = (pid, client)
            client.send(json.dumps({"id": request["id"], "pid": pid}).encode())


def _client(args: list[str]) -> None:
    """``kdkit ARGS`` from a shell (see :func:`bin_directory`); runs with ``python -S``: stdlib only."""
    import signal

    sock = _connect(os.environ.pop("KDKIT_PRESTARTED_SOCKET"))
    request = {"id": 1, "module": "kdkit", "args": args, "env": dict(os.environ), "cwd": os.getcwd(),
               "new_session": False}
    socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
    pid = json.loads(sock.recv(_MAX_PACKET))["pid"]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda sig, _: os.kill(pid, sig))
    message = json.loads(sock.recv(_MAX_PACKET))
    code = message["returncode"]
    if code < 0:  # ended by a signal: end the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def _become_command(request: dict, fds: list[int], base_path: list[str], default_threads: int) -> None:
    """In the forked child: the state ``python -m MODULE ARGS`` starts from, then that module as ``__main__``."""
    import importlib
    import random
    import runpy
    import signal

    import numpy
    import torch

    try:
        if request["new_session"]:
            os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds) - {0, 1, 2}:
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        env = request["env"]
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(env)
        extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        script = request.get("script")  # python SCRIPT puts the script's (real) folder first, python -m the cwd
        sys.path[:] = [os.path.dirname(os.path.realpath(script)) if script else request["cwd"], *extra, *base_path]
        importlib.invalidate_caches()
        threads = env.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else default_threads)
        random.seed()  # a fresh interpreter's seeds, not the server's
        numpy.random.seed()
        sys.argv = [script or "-m", *request["args"]]
        if request.get("module") == "kdkit" and "sweep" in request["args"]:
            _runs_forked_from_here(base_path, default_threads)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(125)
    try:
        if script:
            runpy.run_path(script, run_name="__main__")
        else:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException as e:  # what the interpreter does with it: the traceback, then status 1
        sys.excepthook(type(e), e, e.__traceback__)
        if isinstance(e, KeyboardInterrupt):  # ... or, for Ctrl-C, ending by SIGINT
            _exit_without_finalizing(None, signal.SIGINT)
        code = 1
    _exit_without_finalizing(code)


def _runs_forked_from_here(base_path: list[str], default_threads: int) -> None:
    """In a forked ``kdkit sweep``, before it starts: the runs its local executor starts become forks too,
    of a copy of this process taken now (still the server's state), which stays in the sweep's session and
    process group (signalling or killing the group reaches them as it reaches a real subprocess; a fork of
    the server could not join a group of another session).  Without it each run was a fresh interpreter
    that imported torch again, 3-5 s of CPU."""
    global _server
    mine, its = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        mine.close()
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):  # the sweep's streams stay the sweep's: its caller waits for their end
            os.dup2(null, target)
        os.close(null)
        try:
            _fork_loop(None, [its], base_path, default_threads)
        finally:
            os._exit(1)
    its.close()
    _server = _Server(attached=mine)
    from kdkit.sweep.executors import LocalExecutor

    LocalExecutor.popen = staticmethod(Popen)


def _exit_without_finalizing(code, by_signal: int | None = None) -> None:
    """End the forked command as an interpreter's exit does — non-daemon threads joined, :mod:`atexit`
    handlers run (multiprocessing's and ``weakref.finalize``'s among them), the standard streams flushed, the
    status ``code`` of :class:`SystemExit` — but without tearing down the modules: in a forked child that
    teardown decrements the refcount of every object the server imported, so the kernel copies each of its
    pages (about 1.2 s of CPU per command with torch loaded, where the command itself took 0.02 s).
    :mod:`multiprocessing` ends its forked workers with ``os._exit`` for the same reason.  Where flushing
    fails (a closed pipe), the normal exit reports it as it would."""
    import atexit
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        sys.exit(code)
    if by_signal is not None:
        import signal

        signal.signal(by_signal, signal.SIG_DFL)
        os.kill(os.getpid(), by_signal)
    os._exit(status & 0xFF)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(sys.argv[2])
elif __name__ == "__main__" and sys.argv[1:2] == ["--client"]:
    _client(sys.argv[2:])
