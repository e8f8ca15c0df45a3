"""Warm stages: run each DVC stage in a fork of a process that has already imported torch & co.

Every stage of `dvc repro` is a fresh `python` process, and on the 2-core VM each one spends 3-6 s
before its first useful line: importing torch (1.2 s), torch._dynamo (1.0 s, pulled in by the first
optimizer), MLflow and its SQL store (2.0 s), transformers and peft (2 s), then tearing torch down
again (0.4 s). Nineteen stages pay that about 70 s of a demo that trains for about 130 s.

So a stage's script asks a warm server for a fork instead, the way build tools keep a daemon
(Gradle, Bazel). The first stage finds none, starts one in the background and runs cold; the server
imports the third-party libraries while that stage runs, and every later stage becomes a fork of it.

What keeps a fork equal to a cold run:
- The server imports third-party libraries only, never nstlab, so every stage imports the project's
  code as it is on disk now; an edit between stages is always seen.
- A server serves one environment: its socket's name hashes the interpreter, `sys.path` (and the
  folders' modification times, which `pip install` changes) and the environment variables (but
  those set per command: the shell's PWD, DVC's DVC_STAGE and DVC_EXP_NAME). Anything else gets a server of its own.
- The child takes the client's cwd, environment, argv and stdin/stdout/stderr (passed as file
  descriptors), and NumPy's global generator is reseeded as a new process's would be.
- Ctrl-C, SIGTERM and SIGHUP reach the child; if the client dies (kill -9), the child kills itself.
- A fork happens only while the server runs one Python thread, so no Python lock is held across it
  (the native pools that libraries start, OpenBLAS's and jemalloc's, have their own fork handlers).

`NSTLAB_WARM=0` runs every stage cold. A server exits after 10 minutes without work (about 1 GB of
memory, mostly shared with its forks), so a `dvc exp run` soon after a repro starts warm too;
`NSTLAB_WARM_IDLE_S` sets that time.
"""

import atexit
import hashlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# What the stages import that costs time; a library missing here is simply not preloaded.
PRELOAD = (
    "numpy",
    "PIL.Image",
    "yaml",
    "typer",
    "rich.progress",
    "torch",
    "torch._dynamo",
    "torch.optim",
    "torchvision",
    "pandas",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "transformers",
    "transformers.models.vit.modeling_vit",
    "peft",
)
IDLE_SECONDS = 600.0  # NSTLAB_WARM_IDLE_S overrides
HANDSHAKE_SECONDS = 120.0  # the longest a stage waits for a server still importing its libraries
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# set per command by the shell, and per stage or experiment by DVC (DVC_STAGE, DVC_EXP_NAME, ...):
# read at run time, never at import, so they need no server of their own
PER_COMMAND_VARIABLES = {"PWD", "OLDPWD", "SHLVL", "_"}
PER_COMMAND_PREFIX = "DVC_"


def run_stage(argv: list[str], target: str = "nstlab.cli:main") -> None:
    """Run `target(argv)` in a warm fork when a server is up (starting one otherwise), else in-process."""
    if os.environ.get("NSTLAB_WARM", "1") == "0" or not hasattr(socket, "send_fds"):
        _call(target, argv)
        return
    try:
        address = socket_path(environment_key())
    except OSError:  # no private folder for the socket: run cold, as without a server
        _call(target, argv)
        return
    try:
        connection = _connect(address)
        pid = _request_fork(connection, target, argv)
    except (OSError, ValueError, KeyError):
        _start_server(address)
        _call(target, argv)
        return
    code = _wait_for(connection, pid)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def environment_key() -> str:
    """What a forked stage inherits from the server and cannot change: interpreter, import path, env."""
    folders = []
    for entry in sys.path[1:]:  # [0] is the calling script's folder; the child gets the client's
        try:
            folders.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            folders.append((entry, None))
    environment = sorted(
        (k, v)
        for k, v in os.environ.items()
        if k not in PER_COMMAND_VARIABLES and not k.startswith(PER_COMMAND_PREFIX)
    )
    protocol = os.stat(__file__).st_mtime_ns  # an edited warm.py never talks to an old server
    blob = json.dumps([sys.executable, sys.version, protocol, folders, environment, os.getuid()])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def socket_path(key: str) -> Path:
    """A per-user folder only its owner can enter, so only the same user can ask for a fork."""
    folder = Path(tempfile.gettempdir()) / f"nstlab-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise PermissionError(f"{folder}: not private to this user; remove it")
    return folder / f"{key}.sock"


# --- client ---------------------------------------------------------------------------------------


def _call(target: str, argv: list[str]) -> None:
    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)(argv)


def _connect(address: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(address))
    except OSError:
        connection.close()
        raise
    return connection


def _start_server(address: Path) -> None:
    """Start a server in a session of its own, holding none of our pipes (a caller waiting for EOF
    on our stdout must not wait for it), then let this stage run cold meanwhile."""
    try:
        subprocess.Popen(
            [sys.executable, __file__, "serve", str(address), json.dumps(sys.path[1:])],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        pass  # no server: this and later stages run cold


def _request_fork(connection: socket.socket, target: str, argv: list[str]) -> int:
    """Send argv, cwd, environment, import path and our stdin/stdout/stderr; get the stage's pid.
    Any failure up to here means no stage has started, so the caller may safely run it cold."""
    request = {
        "target": target,
        "argv": argv,
        "argv0": sys.argv[0],
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "path": sys.path,
    }
    connection.settimeout(HANDSHAKE_SECONDS)
    try:
        socket.send_fds(connection, [_frame(request)], [0, 1, 2])
        pid = int(_receive(connection)["pid"])
    except (OSError, ValueError, KeyError):
        connection.close()
        raise
    connection.settimeout(None)
    return pid


def _wait_for(connection: socket.socket, pid: int) -> int:
    """Forward our signals to the stage and return its exit code. Once it has started, a lost
    server is reported, never answered by running the stage a second time."""

    def forward(received: int, _frame: object) -> None:
        try:
            os.kill(pid, received)
        except ProcessLookupError:
            pass

    for number in FORWARDED_SIGNALS:
        signal.signal(number, forward)
    try:
        return int(_receive(connection)["exit"])
    except (OSError, ValueError, KeyError) as error:
        print(
            f"nstlab: error: the warm stage process {pid} was lost ({error}); rerun the stage",
            file=sys.stderr,
        )
        return 1


def _receive(connection: socket.socket, data: bytes = b"") -> dict:
    """One message, both ways: a 4-byte big-endian length, then that many bytes of JSON. `data`:
    what the caller has already read of it."""
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk = connection.recv(1 << 16)
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
    return json.loads(data[4:])


def _frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack("!I", len(body)) + body


# --- server ---------------------------------------------------------------------------------------


def serve(address: Path, path: list[str]) -> None:
    """Listen first (a stage arriving during the imports waits instead of starting a rival), import,
    then fork a child per request until IDLE_SECONDS pass without work."""
    sys.path[:] = path
    os.chdir("/")  # hold no caller's folder busy; each child moves to its client's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        address.unlink(missing_ok=True)  # a dead server's socket: connecting to it was refused
        listener.bind(str(address))
    except OSError:
        return
    listener.listen(16)
    identity = address.stat().st_ino
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a library that is absent or broken is left to the stage
            pass
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    last_work = time.monotonic()
    try:
        idle_seconds = float(os.environ.get("NSTLAB_WARM_IDLE_S", IDLE_SECONDS))
    except ValueError:
        idle_seconds = IDLE_SECONDS
    while children or time.monotonic() - last_work < idle_seconds:
        ready, _, _ = select.select([listener, wake_read], [], [], 5.0)
        if wake_read in ready:
            os.read(wake_read, 4096)
        if _reap(children):
            last_work = time.monotonic()
        if listener in ready:
            _accept(listener, children, [listener, wake_read, wake_write])
            last_work = time.monotonic()
        if not _still_ours(address, identity):
            break
    listener.close()
    if _still_ours(address, identity):
        address.unlink(missing_ok=True)


def _still_ours(address: Path, identity: int) -> bool:
    try:
        return address.stat().st_ino == identity
    except OSError:
        return False


def _accept(listener: socket.socket, children: dict[int, socket.socket], inherited: list) -> None:
    connection, _ = listener.accept()
    fds: list[int] = []
    try:
        uid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.getuid():
            raise PermissionError("another user")
        connection.settimeout(10.0)
        request, fds = _receive_request(connection)
        connection.settimeout(None)
        if threading.active_count() != 1:  # native pools (OpenBLAS, jemalloc) have fork handlers
            raise RuntimeError("a Python thread could hold a lock across the fork")
        pid = os.fork()
    except Exception:  # noqa: BLE001 - a bad request costs that client a cold run, not the server
        for fd in fds:
            os.close(fd)
        connection.close()
        return
    if pid == 0:
        _run_child(connection, request, fds, [*children.values(), *inherited])
    for fd in fds:
        os.close(fd)
    children[pid] = connection
    _send(connection, {"pid": pid})


def _receive_request(connection: socket.socket) -> tuple[dict, list[int]]:
    """The request, with the client's stdin/stdout/stderr riding on its first bytes."""
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request: no standard streams")
    try:
        return _receive(connection, data), fds
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        raise


def _reap(children: dict[int, socket.socket]) -> bool:
    """Tell each finished stage's client its exit code; True if any finished."""
    reaped = False
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped = True
        connection = children.pop(pid, None)
        if connection is not None:
            code = os.waitstatus_to_exitcode(status)
            _send(connection, {"exit": code if code >= 0 else 128 - code})
            connection.close()
    return reaped


def _send(connection: socket.socket, message: dict) -> None:
    try:
        connection.sendall(_frame(message))
    except OSError:
        pass  # the client is gone; its child has killed itself or will


def _run_child(connection: socket.socket, request: dict, fds: list[int], server_handles: list) -> None:
    """Become the stage: the client's cwd, environment, argv and standard streams, then its target."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for handle in server_handles:
            handle.close() if isinstance(handle, socket.socket) else os.close(handle)
        os.setpgid(0, 0)
        for standard, fd in enumerate(fds):
            os.dup2(fd, standard)
            os.close(fd)
        _rebind_standard_streams()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = request["path"]
        sys.argv = [request["argv0"], *request["argv"]]
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()  # a new process's fresh global generator
        threading.Thread(target=_die_with_client, args=(connection,), daemon=True).start()
        try:
            _call(request["target"], request["argv"])
            code = 0
        except SystemExit as stop:  # as the interpreter reads sys.exit's argument
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
        except BaseException as error:  # noqa: BLE001 - reported as the interpreter reports it
            sys.excepthook(*sys.exc_info())
            code = 128 + signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
        atexit._run_exitfuncs()  # what a cold process runs at exit; its slow teardown is skipped
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _rebind_standard_streams() -> None:
    """Python chose the server's streams' buffering for /dev/null; choose again for the client's."""
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        old = getattr(sys, name)
        line = mode == "w" and (fd == 2 or os.isatty(fd))
        stream = open(
            fd, mode, buffering=1 if line else -1, encoding=old.encoding, errors=old.errors, closefd=False
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _die_with_client(connection: socket.socket) -> None:
    """The client sends nothing after its request, so a read returns only when it has died."""
    try:
        connection.recv(1)
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":  # python warm.py serve ADDRESS PATH_JSON (started by _start_server)
    sys.path.pop(0)  # this file's folder: nstlab's own modules must not import as top-level names
    serve(Path(sys.argv[2]), json.loads(sys.argv[3]))
