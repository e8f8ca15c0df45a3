"""Warm stages (nstlab.warm): a stage forked from a server that has imported torch & co. behaves as
the cold process would: its cwd, environment, argv, streams, exit code, signals and current code."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from nstlab import warm

# The stage the tests run: what a process sees, as JSON on stdout; then an exit code, or a nap.
TARGET = """
import json, os, sys, time

def main(argv):
    if argv[0] == "nap":
        open(argv[1], "w").write(str(os.getpid()))
        time.sleep(60)
    print(json.dumps({"version": VERSION, "pid": os.getpid(), "cwd": os.getcwd(), "argv": argv,
                      "sys_argv": sys.argv, "dvc_stage": os.environ.get("DVC_STAGE"),
                      "stdin": sys.stdin.read(), "torch_preloaded": "torch" in sys.modules}))
    print("to stderr", file=sys.stderr)
    sys.exit(int(argv[1]))
"""

CLIENT = "import sys; from nstlab.warm import run_stage; run_stage(sys.argv[1:], target='stage_target:main')"


def _client_env(folder, **settings: str) -> dict:
    """Write the target stage into `folder` and return a client's environment that imports it.
    pytest's per-test variable is left out: it would give every test a server of its own."""
    (folder / "stage_target.py").write_text("VERSION = 1\n" + TARGET)
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}
    return {**env, "PYTHONPATH": str(folder), **settings}


def _server_socket(env: dict):
    """The socket of the server that clients with `env` use (the key as a `-c` client computes it)."""
    key = subprocess.run(
        [sys.executable, "-c", "from nstlab.warm import environment_key; print(environment_key())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return warm.socket_path(key)


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """Run the target stage through run_stage in a fresh client process; the first call starts the
    module's server (its environment is this module's own), which the fixture waits for."""
    folder = tmp_path_factory.mktemp("target")
    env = _client_env(folder, NSTLAB_WARM="1", NSTLAB_WARM_IDLE_S="30")

    def run(*argv, stdin="", cwd=None, extra_env=None):
        process = subprocess.Popen(
            [sys.executable, "-c", CLIENT, *argv],
            cwd=cwd or folder,
            env={**env, **(extra_env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = process.communicate(stdin, timeout=180)
        return process, out, err

    process, out, _ = run("ok", "0")
    assert json.loads(out)["pid"] == process.pid  # no server yet: the first stage ran cold
    deadline = time.monotonic() + 120
    while True:  # the server imports torch & co. in the background; then stages are forks
        process, out, _ = run("ok", "0")
        if json.loads(out)["pid"] != process.pid or time.monotonic() > deadline:
            break
        time.sleep(1)
    run.folder, run.env = folder, env
    return run


def test_a_warm_stage_is_a_fork_with_the_callers_cwd_argv_environment_and_streams(stage, tmp_path):
    process, out, err = stage(
        "ok", "3", stdin="piped in", cwd=tmp_path, extra_env={"DVC_STAGE": "train_baseline@adain"}
    )
    seen = json.loads(out)
    assert seen["pid"] != process.pid and seen["torch_preloaded"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["argv"] == ["ok", "3"] and seen["sys_argv"] == ["-c", "ok", "3"]
    assert seen["dvc_stage"] == "train_baseline@adain" and seen["stdin"] == "piped in"
    assert err == "to stderr\n"
    assert process.returncode == 3


def test_a_warm_stage_imports_the_project_code_as_it_is_now(stage):
    target = stage.folder / "stage_target.py"
    target.write_text("VERSION = 2\n" + TARGET)
    try:
        process, out, _ = stage("ok", "0")
        assert json.loads(out)["version"] == 2 and json.loads(out)["pid"] != process.pid
    finally:
        target.write_text("VERSION = 1\n" + TARGET)


def _wait_for(path, seconds=60):
    deadline = time.monotonic() + seconds
    while not (path.is_file() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.1)
    return int(path.read_text())


def _gone(pid, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _start_nap(stage, tmp_path):
    marker = tmp_path / "pid"
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT, "nap", str(marker)],
        cwd=stage.folder,
        env=stage.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child = _wait_for(marker)
    assert child != process.pid  # a warm fork
    return process, child


def test_ctrl_c_reaches_the_warm_stage(stage, tmp_path):
    process, child = _start_nap(stage, tmp_path)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGINT
    assert "KeyboardInterrupt" in err and _gone(child)


def test_killing_the_client_kills_its_warm_stage(stage, tmp_path):
    process, child = _start_nap(stage, tmp_path)
    process.kill()
    process.communicate(timeout=30)
    assert _gone(child)


def test_the_server_is_keyed_by_environment_and_path_but_not_per_command_variables(monkeypatch):
    key = warm.environment_key()
    monkeypatch.setenv("DVC_STAGE", "some_stage")
    monkeypatch.setenv("DVC_EXP_NAME", "some-exp")
    monkeypatch.setenv("PWD", "/elsewhere")
    assert warm.environment_key() == key
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert warm.environment_key() != key
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(sys, "path", [*sys.path, "/some/other/site-packages"])
    assert warm.environment_key() != key


def test_switched_off_a_stage_runs_in_the_callers_process(tmp_path):
    env = _client_env(tmp_path, NSTLAB_WARM="0")
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT, "ok", "0"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = json.loads(process.communicate("", timeout=120)[0])
    assert seen["pid"] == process.pid and not seen["torch_preloaded"]


def test_a_socket_folder_others_can_enter_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(warm.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = tmp_path / f"nstlab-warm-{os.getuid()}"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    with pytest.raises(PermissionError, match="not private"):
        warm.socket_path("k")
    folder.chmod(0o700)
    assert warm.socket_path("k") == folder / "k.sock"


def test_the_stage_scripts_go_through_run_stage():
    from conftest import REPO

    for script in sorted((REPO / "pipeline").glob("*.py")):
        text = script.read_text()
        assert "from nstlab.warm import run_stage" in text and "run_stage([" in text, script.name


def test_an_idle_server_exits_and_removes_its_socket(tmp_path):
    env = _client_env(tmp_path, NSTLAB_WARM="1", NSTLAB_WARM_IDLE_S="2")
    socket_file = _server_socket(env)
    subprocess.run(
        [sys.executable, "-c", CLIENT, "ok", "0"],
        cwd=tmp_path,
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )  # cold; starts the server
    deadline = time.monotonic() + 60
    while not socket_file.exists():
        assert time.monotonic() < deadline, "no server started"
        time.sleep(0.1)
    while socket_file.exists():  # 2 s idle after its imports
        assert time.monotonic() < deadline + 60, "the idle server never exited"
        time.sleep(0.2)


def test_a_malformed_request_costs_that_client_only(stage):
    """Bytes without the standard streams: the server closes that connection and serves on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(_server_socket(stage.env)))
        client.sendall(b"\x00\x00\x00\x02{}")
        client.settimeout(30)
        assert client.recv(1) == b""  # closed, no fork
    process, out, _ = stage("ok", "0")
    assert json.loads(out)["pid"] != process.pid
