"""The sandbox (``reward_models.sandbox``) and the ``code_tests`` reward built on it. Every run uses a 1-2 s limit."""

from __future__ import annotations

import json
import os
import sys

import pytest

from reward_models import CodeExecReward, build_reward, extract_code, get_reward, parse_tests, run_sandboxed
from reward_models.sandbox import netns_available, probe_isolation

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux only")

FAST = {"timeout_s": 2.0, "cpu_time_s": 2, "memory_mb": 256}
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
IO_TESTS = json.dumps([{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"}])


def run(code, **kw):
    return run_sandboxed(code, **{**FAST, **kw})


# ------------------------------------------------------------------------------------------------- run_sandboxed


def test_correct_code_runs_with_stdin():
    res = run(ADD, stdin="2 40\n")
    assert res.status == "ok" and res.returncode == 0 and res.stdout == "42\n"
    assert res.isolation == probe_isolation().isolation  # the layers this host allows, e.g. userns+...+audit
    assert res.isolation.split("+")[-2:] == ["rlimits", "audit"]


def test_wrong_code_is_an_error():
    res = run("print(undefined_name)")
    assert res.status == "error" and res.returncode == 1 and "NameError" in res.stderr


def test_infinite_loop_is_stopped_by_the_wall_clock():
    res = run("while True: pass", timeout_s=1.0, cpu_time_s=5)
    assert res.status == "timeout"
    assert res.wall_s < 1.0 + 3


def test_cpu_limit_stops_a_busy_loop():
    res = run("while True: pass", timeout_s=10.0, cpu_time_s=1)
    assert res.status == "timeout" and res.wall_s < 1 + 3


def test_unbounded_memory_is_stopped_and_the_parent_survives():
    res = run("x = []\nwhile True: x.append(' ' * 10**7)", memory_mb=128)
    assert res.status in ("memory", "error") and res.status != "ok"
    assert res.wall_s < 2.0 + 3
    assert run("print('still here')").stdout == "still here\n"  # the parent process is fine and can go on


@pytest.mark.parametrize(
    "code",
    [
        "import socket; socket.socket().connect(('127.0.0.1', 1))",
        "import socket; socket.create_connection(('127.0.0.1', 1), timeout=1)",
        "import _socket; _socket.socket().connect(('127.0.0.1', 1))",
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:1', timeout=1)",  # refused at 'import _ssl'
    ],
)
def test_network_is_refused(code):
    for netns in (None, False):  # the audit guard refuses with or without a network namespace
        res = run(code, netns=netns)
        assert res.status == "refused" and res.refused in ("socket.__new__", "socket.getaddrinfo", "import")


def test_refusal_cannot_be_swallowed():
    res = run("import socket\ntry:\n    socket.socket()\nexcept BaseException:\n    pass\nprint('escaped')")
    assert res.status == "refused" and "escaped" not in res.stdout


@pytest.mark.parametrize("how", ["open", "os.open", "pathlib", "symlink"])
def test_reading_a_file_outside_the_sandbox_is_refused(tmp_path, how):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-42")
    code = {
        "open": f"print(open({str(secret)!r}).read())",
        "os.open": f"import os; print(os.read(os.open({str(secret)!r}, os.O_RDONLY), 100))",
        "pathlib": f"import pathlib; print(pathlib.Path({str(secret)!r}).read_text())",
        "symlink": f"import os; os.symlink({str(secret)!r}, 'link'); print(open('link').read())",
    }[how]
    res = run(code)
    assert res.status == "refused"
    assert "TOP-SECRET-42" not in res.stdout and "TOP-SECRET-42" not in res.stderr


@pytest.mark.parametrize(
    "code",
    [
        "print(open('/etc/passwd').read())",
        "import os; print(os.listdir('/'))",
        "open('../escape.txt', 'w').write('x')",
        "open({target!r}, 'a').write('x')",  # a file the parent can write to
        "import os; os.remove({target!r})",
    ],
)
def test_other_outside_file_access_is_refused(tmp_path, code):
    target = tmp_path / "victim.txt"
    target.write_text("v")
    res = run(code.format(target=str(target)))
    assert res.status == "refused" and "root:" not in res.stdout
    assert target.read_text() == "v"


def test_files_inside_the_sandbox_work_and_are_removed():
    code = (
        "import os, tempfile\n"
        "with open('notes.txt', 'w') as f: f.write('hello')\n"
        "os.mkdir('sub'); open('sub/x', 'w').write('y')\n"
        "with tempfile.TemporaryFile() as t: t.write(b'z')\n"
        "print(open('notes.txt').read(), sorted(os.listdir('.')), os.getcwd())\n"
    )
    res = run(code)
    assert res.status == "ok", res.stderr
    text, _, cwd = res.stdout.strip().rpartition(" ")
    assert text.startswith("hello ['notes.txt', 'sub'")
    assert not os.path.exists(cwd)  # the temporary directory is gone afterwards


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess; subprocess.run(['echo', 'hi'])",
        "import os; os.system('echo hi')",
        "import os; os.execv('/bin/echo', ['echo', 'hi'])",
        "import os; os.fork()",
        "import os; os.kill(os.getppid(), 0)",  # signal 0: harmless even if the guard failed
        "import ctypes",
    ],
)
def test_processes_signals_and_ctypes_are_refused(code):
    res = run(code)
    assert res.status == "refused" and "hi" not in res.stdout


def test_environment_is_minimal():
    os.environ["RLKIT_SANDBOX_TEST_SECRET"] = "leak"
    try:
        res = run("import os; print(sorted(os.environ))")
    finally:
        del os.environ["RLKIT_SANDBOX_TEST_SECRET"]
    assert res.status == "ok" and "RLKIT_SANDBOX_TEST_SECRET" not in res.stdout and "'PATH'" in res.stdout


def test_output_is_capped():
    res = run("print('x' * 100000)", max_output_bytes=1000)
    assert res.status == "error" and res.truncated and len(res.stdout) == 1000


def test_network_namespace_is_reported_when_used():
    res = run("print(1)")
    assert ("netns" in res.isolation.split("+")) == netns_available()
    without = run("print(1)", netns=False).isolation.split("+")
    assert not {"userns", "mntns", "pidns", "netns"} & set(without) and without[-2:] == ["rlimits", "audit"]


# ----------------------------------------------------------------------------------------------------- code_tests


def test_code_tests_is_registered():
    assert get_reward("code_tests") is CodeExecReward
    assert isinstance(build_reward("code_tests", timeout_s=1.0, mode="all"), CodeExecReward)
    with pytest.raises(ValueError, match="mode"):
        CodeExecReward(mode="some")


def test_extract_code_and_parse_tests():
    text = "Idea first:\n```\nnot this\n```\nThen:\n```python\nprint(1)\n```\n<|endoftext|>"
    assert extract_code(text) == "print(1)\n"
    assert extract_code("print(2)") == "print(2)"
    assert extract_code("```py\nprint(3)") == "print(3)\n"  # unterminated fence
    io = parse_tests(IO_TESTS)
    assert [(t.stdin, t.expected) for t in io] == [("1 2\n", "3\n"), ("10 -4\n", "6")]
    asserts = parse_tests("import math\nassert f(1) == 2\nassert f(2) == math.floor(3.5)")
    assert [t.suffix for t in asserts] == [
        "import math\nassert f(1) == 2",
        "import math\nassert f(2) == math.floor(3.5)",
    ]
    assert parse_tests(None) == [] and parse_tests("  ") == []


def test_code_tests_scores_stdin_stdout_and_asserts():
    reward = CodeExecReward(**FAST)
    good = f"```python\n{ADD}```"
    half = "```python\na, b = map(int, input().split())\nprint(3)\n```"
    assert reward(["p"] * 3, [good, half, "print("], [IO_TESTS] * 3) == [1.0, 0.5, 0.0]
    asserts = "assert f(2) == 4\nassert f(3) == 9\nassert f(0) == 1"
    assert reward(["p"], ["def f(x):\n    return x * x"], [asserts]) == [pytest.approx(2 / 3)]
    assert reward.details(["p"], ["def f(x):\n    return x * x"], [asserts]) == [[True, True, False]]
    strict = CodeExecReward(mode="all", **FAST)
    assert strict(["p", "p"], [good, half], [IO_TESTS] * 2) == [1.0, 0.0]
    assert [o.status for o in strict.run_tests(half, IO_TESTS)] == ["ok", "wrong"]
    assert reward(["p"], [good], [None]) == [0.0]


def test_code_tests_scores_hostile_samples_zero_and_the_batch_goes_on(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-42")
    reward = CodeExecReward(timeout_s=1.0, cpu_time_s=2, memory_mb=128)
    completions = [
        ADD,
        "while True: pass",
        "x = []\nwhile True: x.append(' ' * 10**7)",
        "import socket; socket.socket().connect(('127.0.0.1', 1))",
        "import socket; socket.create_connection(('127.0.0.1', 1))",
        f"print(open({str(secret)!r}).read())",
        "print(open('/etc/passwd').read())",
        "import os; os.system('echo 3')",
        "import subprocess; print(subprocess.check_output(['echo', '3']).decode())",
        ADD,
    ]
    tests = json.dumps([{"input": "1 2", "output": "3"}])
    scores = reward(["p"] * len(completions), completions, [tests] * len(completions))
    assert scores == [1.0] + [0.0] * 8 + [1.0]
    statuses = [o.status for c in completions[1:9] for o in reward.run_tests(c, tests)]
    assert statuses[0] == "timeout" and statuses[1] in ("memory", "error") and set(statuses[2:]) == {"refused"}
