"""Hostile programs against the code sandbox (``reward_models.sandbox``).

Every attack is a ``code_tests`` completion that reads ``1 2`` and prints ``3`` -- the right answer -- only if the
attack worked, so it must score 0 through the real reward. Each attack then runs again with the audit hook left out
(``audit_hook=False``), once per namespace mode this host allows, to show that the namespaces and the seccomp filter
stop it on their own (the audit hook is a tripwire, not a wall). After every run the outside world is checked: no
file appeared or changed outside the sandbox, the victim process and this one are alive, the listeners got nothing,
no process the attack started is left. Attacks that need a layer the host refuses are skipped, with the reason.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reward_models import CodeExecReward
from reward_models import sandbox
from reward_models.sandbox import (
    IsolationProbe,
    SandboxUnavailableError,
    probe_isolation,
    require_isolation,
    run_sandboxed,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux only")

LINUX = sys.platform.startswith("linux")
PROBE = probe_isolation() if LINUX else IsolationProbe("none", "")
LAYERS = PROBE.layers
WALLS = {"mntns", "pidns", "netns", "seccomp"}
TESTS = json.dumps([{"input": "1 2\n", "output": "3\n"}])
REPO_FILE = Path(__file__).resolve().parents[1] / "pyproject.toml"
TOKEN = secrets.token_hex(8)
LIMITS = {"timeout_s": 3.0, "cpu_time_s": 2, "memory_mb": 256}

TEMPLATE = """\
import os, sys
a, b = map(int, input().split())
ok = False
try:
{body}
except BaseException as exc:
    print("blocked:", type(exc).__name__, exc, file=sys.stderr)
print(a + b if ok else "blocked")
"""

# (name, layers it needs -- "ns" stands for the namespace set --, body). The body sets ``ok = True`` only once the
# attack has worked. Placeholders: {t} a path outside the sandbox that must not appear, {outside} its folder, {secret}
# a file there, {token} the secret's content, {me} this test process, {victim} a process to kill, {port}/{uport}
# TCP/UDP listeners, {abstract} an abstract AF_UNIX listener, {repo} the repository's pyproject.toml, {rel} the path
# {t} relative to this process's working directory. Attacks that write only target files of this test (a sandbox
# broken while developing must not damage the checkout or the host); the repository is only read.
FS, SC = {"ns"}, {"seccomp"}
ATTACKS = [
    # -- files outside the sandbox, by every syscall family
    ("open-creat", FS, "open({t!r}, 'w').write('x'); ok = True"),
    ("os.open-creat", FS, "os.close(os.open({t!r}, os.O_CREAT | os.O_WRONLY, 0o644)); ok = True"),
    ("mkdir", FS, "os.mkdir({t!r}); ok = True"),
    ("makedirs", FS, "os.makedirs({t!r} + '/a/b'); ok = True"),
    ("mknod (no audit event)", FS, "os.mknod({t!r}); ok = True"),
    ("mkfifo (no audit event)", FS, "os.mkfifo({t!r}); ok = True"),
    ("symlink", FS, "os.symlink('/etc/passwd', {t!r}); ok = True"),
    ("hard link", FS, "open('inside', 'w').write('x'); os.link('inside', {t!r}); ok = True"),
    ("rename out", FS, "open('inside', 'w').write('x'); os.rename('inside', {t!r}); ok = True"),
    ("replace out", FS, "open('inside', 'w').write('x'); os.replace('inside', {t!r}); ok = True"),
    ("shutil.copy", FS, "import shutil; open('inside', 'w').write('x'); shutil.copy('inside', {t!r}); ok = True"),
    ("/proc/self/root", FS, "open('/proc/self/root' + {t!r}, 'w').write('x'); ok = True"),
    ("/proc/<me>/root", FS, "open('/proc/{me}/root' + {t!r}, 'w').write('x'); ok = True"),
    ("/proc/<ppid>/cwd", FS, "open(f'/proc/{{os.getppid()}}/cwd/' + {rel!r}, 'w').write('x'); ok = True"),
    ("/proc/<me>/cwd", FS, "open('/proc/{me}/cwd/' + {rel!r}, 'w').write('x'); ok = True"),
    (
        "dir_fd of /",
        FS,
        "d = os.open('/', os.O_RDONLY | os.O_DIRECTORY)\n"
        "os.close(os.open({t!r}.lstrip('/'), os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d)); ok = True",
    ),
    (
        "dir_fd + ..",
        FS,
        "d = os.open('.', os.O_RDONLY | os.O_DIRECTORY)\n"
        "os.close(os.open('../' * 12 + {t!r}.lstrip('/'), os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d)); ok = True",
    ),
    ("append to the secret", FS, "open({secret!r}, 'a').write('pwned'); ok = True"),
    ("chmod the secret", FS, "os.chmod({secret!r}, 0o777); ok = True"),
    ("truncate the secret", FS, "os.truncate({secret!r}, 0); ok = True"),
    ("unlink the secret", FS, "os.unlink({secret!r}); ok = True"),
    (
        "mount (libc)",
        FS | SC,
        "import ctypes; ok = ctypes.CDLL(None).mount(b'none', {outside!r}.encode(), b'tmpfs', 0, None) == 0",
    ),
    ("unshare a user namespace (libc)", SC, "import ctypes; ok = ctypes.CDLL(None).unshare(0x10000000) == 0"),
    (
        "_ctypes found via __subclasses__",
        FS,
        "todo, seen = [object], {{}}\n"
        "while todo:\n"
        "    c = todo.pop()\n"
        "    for s in type.__subclasses__(c):\n"
        "        if s not in seen.values(): seen[s.__name__] = s; todo.append(s)\n"
        "F, S = seen['CFuncPtr'], seen['_SimpleCData']\n"
        "L = type('L', (S,), {{'_type_': 'l'}}); Fn = type('Fn', (F,), {{'_flags_': 1, '_restype_': L}})\n"
        "lib = type('D', (), {{'_handle': 0}})()\n"
        "ok = Fn(('mkdir', lib))({t!r}.encode(), 0o755) == 0",
    ),
    # -- signals, by every route
    ("kill the victim", SC | {"pidns"}, "os.kill({victim}, 9); ok = True"),
    ("killpg the victim", SC | {"pidns"}, "os.killpg({victim}, 9); ok = True"),
    (
        "pidfd the victim",
        SC | {"pidns"},
        "import signal; signal.pidfd_send_signal(os.pidfd_open({victim}), 9); ok = True",
    ),
    (
        "pidfd the parent",
        SC | {"pidns"},
        "import signal; signal.pidfd_send_signal(os.pidfd_open(os.getppid()), 0); ok = True",
    ),
    ("signal 0 to the parent", SC | {"pidns"}, "p = os.getppid(); os.kill(p, 0); ok = p > 1"),
    ("signal 0 to this test", SC | {"pidns"}, "os.kill({me}, 0); ok = True"),
    (
        "signal 0 to pid 1",
        SC | {"pidns"},
        "if os.getpid() != 1:  # in a PID namespace, pid 1 is the program\n    os.kill(1, 0); ok = True",
    ),
    ("signal 0 to pid -1", SC | {"pidns"}, "os.kill(-1, 0); ok = True"),
    ("kill the victim (libc)", SC | {"pidns"}, "import ctypes; ok = ctypes.CDLL(None).kill({victim}, 9) == 0"),
    (
        "tgkill the victim (libc)",
        SC | {"pidns"},
        "import ctypes; ok = ctypes.CDLL(None).tgkill({victim}, {victim}, 9) == 0",
    ),
    (
        "ptrace the victim (libc)",
        SC | {"pidns"},
        "import ctypes; ok = ctypes.CDLL(None).ptrace(16, {victim}, 0, 0) == 0",
    ),
    ("setsid (leave the process group)", SC, "os.setsid(); ok = True"),
    # -- other processes
    ("list /proc", FS, "pids = [e for e in os.listdir('/proc') if e.isdigit()]; ok = '{me}' in pids or len(pids) > 1"),
    ("read /proc/<me>/environ", FS, "ok = len(open('/proc/{me}/environ', 'rb').read()) > 0"),
    ("read /proc/<me>/cmdline", FS, "ok = len(open('/proc/{me}/cmdline', 'rb').read()) > 0"),
    ("read /proc/<ppid>/environ", FS, "ok = len(open(f'/proc/{{os.getppid()}}/environ', 'rb').read()) > 0"),
    ("stat /proc/<victim>", FS, "os.stat('/proc/{victim}'); ok = True"),
    # -- the job's files
    ("read the secret", FS, "ok = {token!r} in open({secret!r}).read()"),
    ("stat the secret (no audit event)", FS, "os.stat({secret!r}); ok = True"),
    ("read the secret via /proc/<me>/root", FS, "ok = {token!r} in open('/proc/{me}/root' + {secret!r}).read()"),
    ("read the repo's pyproject.toml", FS, "ok = len(open({repo!r}).read()) > 0"),
    ("stat the repo (no audit event)", FS, "os.stat({repo!r}); ok = True"),
    ("readlink /proc/<me>/cwd (no audit event)", FS, "os.readlink('/proc/{me}/cwd'); ok = True"),
    # -- network
    (
        "TCP connect to a local listener",
        SC | {"netns"},
        "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1); ok = True",
    ),
    (
        "TCP via _socket",
        SC | {"netns"},
        "import _socket; s = _socket.socket(); s.settimeout(1); s.connect(('127.0.0.1', {port})); ok = True",
    ),
    (
        "UDP to a local listener",
        SC | {"netns"},
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {uport})); "
        "ok = True",
    ),
    (
        "abstract AF_UNIX socket",
        SC | {"netns"},
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({abstract!r}); ok = True",
    ),
    ("DNS", SC | {"netns"}, "import socket; socket.getaddrinfo('example.com', 80); ok = True"),
    # -- processes and resources
    (
        "fork",
        SC,
        "kids = []\n"
        "for _ in range(20):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        open('/proc/self/comm', 'w').write('rlkit-{token}'); import time; time.sleep(20); os._exit(0)\n"
        "    kids.append(pid)\n"
        "ok = len(kids) == 20",
    ),
    ("fork (libc)", SC, "import ctypes; ok = ctypes.CDLL(None).fork() > 0"),
    ("subprocess", SC, "import subprocess; ok = subprocess.run(['/bin/sh', '-c', 'touch ' + {t!r}]).returncode == 0"),
    ("os.system", SC, "ok = os.system('touch ' + {t!r}) == 0"),
    (
        "posix_spawn",
        SC,
        "pid = os.posix_spawn('/usr/bin/touch', ['touch', {t!r}], {{}}); ok = os.waitpid(pid, 0)[1] == 0",
    ),
    ("execv", SC, "os.execv('/bin/sh', ['sh', '-c', 'touch ' + {t!r}])"),
    ("memory", set(), "x = bytearray(2 << 30); ok = True"),
    ("mmap", set(), "import mmap; m = mmap.mmap(-1, 2 << 30); ok = True"),
    (
        "disk fill",
        FS,
        "total = 0\n"
        "for i in range(300):\n"
        "    with open(f'f{{i}}', 'wb') as f: f.write(b'x' * (1 << 20))\n"
        "    total += 1 << 20\n"
        "ok = total >= 256 << 20",
    ),
    ("fd exhaustion", set(), "fds = [os.dup(1) for _ in range(1000)]; ok = True"),
    (
        "threads",
        set(),
        "import threading, time\n"
        "threading.stack_size(1 << 16)\n"
        "for _ in range(5000): threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "ok = True",
    ),
]
if os.uname().machine == "x86_64":
    ATTACKS.append(
        (
            "i386 ABI syscall (int 0x80)",
            SC,
            "import ctypes, mmap\n"
            "m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
            "m.write(b'\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3')  # mov eax, 20 (getpid); int 0x80; ret\n"
            "addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\n"
            "ok = ctypes.CFUNCTYPE(ctypes.c_int)(addr)() > 0",
        )
    )


def _modes() -> list[str]:
    """The namespace modes that work here (the probe's own first), for the runs without the audit hook."""
    if not LINUX or PROBE.mode == "none":
        return []
    found = [PROBE.mode]
    for mode in ("nobody", "root", "self"):
        if mode not in found and run_sandboxed("print(7)", _mode=mode, **LIMITS).stdout == "7\n":
            found.append(mode)
    return found


MODES = _modes()


def _missing(needs) -> set[str]:
    needs = (set(needs) - {"ns"}) | (WALLS - {"seccomp"} if "ns" in needs else set())
    return needs - LAYERS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The outside world an attack must not touch: a folder with a secret, a victim process, three listeners."""
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret.txt"
    secret.write_text(f"TOP-SECRET-{TOKEN}")
    secret.chmod(0o644)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    abstract = f"\0rlkit-hostile-{TOKEN}"
    unix.bind(abstract)
    unix.listen()
    for s in (tcp, udp, unix):
        s.setblocking(False)
    state = {
        "outside": outside,
        "secret": secret,
        "victim": victim,
        "tcp": tcp,
        "udp": udp,
        "unix": unix,
        "params": {
            "outside": str(outside),
            "secret": str(secret),
            "token": TOKEN,
            "me": os.getpid(),
            "victim": victim.pid,
            "port": tcp.getsockname()[1],
            "uport": udp.getsockname()[1],
            "abstract": abstract,
            "repo": str(REPO_FILE),
        },
        "repo_hash": hashlib.sha256(REPO_FILE.read_bytes()).hexdigest(),
    }
    yield state
    victim.kill()
    victim.wait()
    for s in (tcp, udp, unix):
        s.close()


def _restore(world):
    """Undo what a previous (failed) attack did, so that each test judges only its own attack."""
    import shutil

    for entry in os.scandir(world["outside"]):
        if entry.name != "secret.txt":
            shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
    world["secret"].write_text(f"TOP-SECRET-{TOKEN}")
    world["secret"].chmod(0o644)
    if world["victim"].poll() is not None:
        world["victim"] = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
        )
        world["params"]["victim"] = world["victim"].pid
    for listener in (world["tcp"], world["unix"]):
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            pass
    try:
        world["udp"].recvfrom(16)
    except BlockingIOError:
        pass


def _program(world, name, body):
    _restore(world)
    target = os.path.join(str(world["outside"]), "made-by-" + "".join(c if c.isalnum() else "-" for c in name))
    params = {**world["params"], "t": target, "rel": os.path.relpath(target, os.getcwd())}
    return TEMPLATE.format(body=textwrap.indent(body.format(**params), "    ")), target


def _assert_world_unchanged(world, target, free_before):
    outside = world["outside"]
    assert not os.path.lexists(target), f"the attack created {target}"
    assert sorted(os.listdir(outside)) == ["secret.txt"], sorted(os.listdir(outside))
    assert world["secret"].read_text() == f"TOP-SECRET-{TOKEN}" and world["secret"].stat().st_mode & 0o777 == 0o644
    assert hashlib.sha256(REPO_FILE.read_bytes()).hexdigest() == world["repo_hash"], "pyproject.toml changed"
    assert world["victim"].poll() is None, "the victim process was killed"
    for listener in (world["tcp"], world["unix"]):
        with pytest.raises(BlockingIOError):
            listener.accept()
            pytest.fail("a listener received a connection")
    with pytest.raises(BlockingIOError):
        world["udp"].recvfrom(16)
        pytest.fail("the UDP listener received a datagram")
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == f"rlkit-{TOKEN}"[:15]:
                leftovers.append(pid)
        except OSError:
            pass
    for pid in leftovers:
        os.kill(int(pid), 9)
    assert not leftovers, f"processes started by the attack are still running: {leftovers}"
    assert free_before - _free(world) < 128 << 20, "the attack filled the host's disk"


def _free(world):
    st = os.statvfs(str(world["outside"]))
    return st.f_bavail * st.f_frsize


@pytest.mark.parametrize("name,needs,body", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_scores_zero_and_leaves_nothing(world, name, needs, body):
    if _missing(needs):
        pytest.skip(f"this host refuses {sorted(_missing(needs))} ({'; '.join(PROBE.notes)})")
    program, target = _program(world, name, body)
    reward = CodeExecReward(**LIMITS)
    free = _free(world)
    start = time.monotonic()
    outcomes = reward.run_tests(f"```python\n{program}```", TESTS)
    assert [o.passed for o in outcomes] == [False], outcomes
    assert reward(["p"], [f"```python\n{program}```"], [TESTS]) == [0.0]
    assert time.monotonic() - start < 4 * LIMITS["timeout_s"]
    _assert_world_unchanged(world, target, free)
    # the walls alone: the same attack without the audit hook, in every namespace mode this host allows
    for mode in MODES:
        res = run_sandboxed(program, stdin="1 2\n", audit_hook=False, _mode=mode, **LIMITS)
        assert "audit" not in res.isolation.split("+") and WALLS <= set(res.isolation.split("+")), res.isolation
        assert res.stdout.strip() != "3", f"{mode}: the attack worked without the audit hook: {res}"
        _assert_world_unchanged(world, target, free)


SECCOMP_ONLY = [a for a in ATTACKS if a[1] == SC or a[1] == SC | {"pidns"} or a[1] == SC | {"netns"}]


@pytest.mark.skipif("seccomp" not in LAYERS, reason="this host refuses seccomp")
@pytest.mark.parametrize("name,needs,body", SECCOMP_ONLY, ids=[a[0] for a in SECCOMP_ONLY])
def test_seccomp_alone_stops_signals_sockets_and_processes(world, name, needs, body):
    """Without namespaces and without the audit hook (the fallback when a host refuses namespaces, minus the
    tripwire), the seccomp filter still stops every signal, socket and process-creation route."""
    program, target = _program(world, name, body)
    free = _free(world)
    res = run_sandboxed(program, stdin="1 2\n", audit_hook=False, namespaces=False, **LIMITS)
    assert res.isolation.split("+")[-2:] == ["seccomp", "rlimits"], res.isolation
    assert res.stdout.strip() != "3", res
    _assert_world_unchanged(world, target, free)


# ------------------------------------------------------------------------------------------ isolation reporting


def test_isolation_string_lists_the_layers_in_place():
    layers = PROBE.isolation.split("+")
    assert layers[-2:] == ["rlimits", "audit"]
    assert layers == [x for x in sandbox.LAYER_ORDER if x in layers]
    if PROBE.mode != "none":
        assert WALLS | {"ipcns", "utsns"} <= set(layers) and ({"userns", "nobody"} & set(layers))
        res = run_sandboxed("import os; print(os.getpid(), os.getppid())", **LIMITS)
        assert res.ok and res.isolation == PROBE.isolation and res.stdout == "1 0\n", res
        res = run_sandboxed("import os; print(sorted(os.listdir('/')))", audit_hook=False, **LIMITS)
        allowed = {
            "bin",
            "dev",
            "etc",
            "lib",
            "lib32",
            "lib64",
            "libx32",
            "proc",
            "sbin",
            "tmp",
            "usr",
            Path(os.path.realpath(sys.base_prefix)).parts[1],
        }  # the Python prefix's top folder (/root here)
        assert res.ok and set(ast.literal_eval(res.stdout)) <= allowed, res.stdout
    without = run_sandboxed("print(1)", namespaces=False, **LIMITS)
    assert without.ok and not {"userns", "mntns", "pidns", "netns"} & set(without.isolation.split("+"))


def test_ordinary_programs_still_work_under_every_layer():
    program = textwrap.dedent("""\
        import concurrent.futures, decimal, heapq, json, os, random, re, signal, tempfile, threading, time
        hits = []
        signal.signal(signal.SIGALRM, lambda *a: hits.append("alarm"))
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        time.sleep(0.2)
        signal.signal(signal.SIGUSR1, lambda *a: hits.append("usr1"))
        signal.raise_signal(signal.SIGUSR1)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            squares = sum(pool.map(lambda x: x * x, range(100)))
        with tempfile.NamedTemporaryFile("w+") as f:
            f.write(json.dumps({"d": str(decimal.Decimal(1) / 7)})); f.seek(0); data = json.load(f)
        print(hits, squares, len(os.urandom(8)), heapq.nsmallest(2, [5, 1, 3]), data["d"][:4], random.random() < 1)
    """)
    expected = "['alarm', 'usr1'] 328350 8 [1, 3] 0.14 True\n"
    for kw in ({}, {"audit_hook": False}, {"namespaces": False}):
        res = run_sandboxed(program, **{**LIMITS, **kw})
        assert res.ok and res.stdout == expected, (kw, res)
    if "seccomp" in LAYERS:  # with the audit hook out of the way, a signal to itself passes the filter
        res = run_sandboxed(
            "import os, signal\nsignal.signal(signal.SIGUSR1, lambda *a: print('usr1'))\n"
            "os.kill(os.getpid(), signal.SIGUSR1)",
            audit_hook=False,
            **LIMITS,
        )
        assert res.ok and res.stdout == "usr1\n", res


def test_cpu_and_wall_limits_still_kill_pid_1():
    assert run_sandboxed("while True: pass", timeout_s=10.0, cpu_time_s=1).status == "timeout"
    res = run_sandboxed(
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass", timeout_s=10.0, cpu_time_s=1
    )
    assert res.status == "timeout" and res.wall_s < 5


def test_strict_refuses_to_score_without_the_walls(monkeypatch):
    require_isolation("best_effort")
    if PROBE.mode != "none":
        assert CodeExecReward(isolation="strict", **LIMITS)(["p"], ["print(3)"], [TESTS]) == [1.0]
    weak = IsolationProbe("none", "seccomp+rlimits+audit", ("nobody: unshare(CLONE_NEWUSER): Operation not permitted",))
    monkeypatch.setattr(sandbox, "_probe_state", [weak])
    with pytest.raises(SandboxUnavailableError, match="isolation='strict' needs mntns") as info:
        CodeExecReward(isolation="strict", **LIMITS)
    assert "\n" not in str(info.value) and "missing mntns+pidns+netns" in str(info.value)
    with pytest.raises(SandboxUnavailableError):
        run_sandboxed("print(3)", isolation="strict")
    assert CodeExecReward(**LIMITS)(["p"], ["print(3)"], [TESTS]) == [1.0]  # best effort still scores
    with pytest.raises(ValueError, match="isolation"):
        CodeExecReward(isolation="paranoid")


def test_seccomp_program_per_architecture():
    from reward_models import _sandbox_boot as boot

    for machine in ("x86_64", "aarch64"):
        prog = boot.seccomp_program(machine, 1)
        assert prog and len(prog) % 8 == 0 and len(prog) // 8 < 4096
    assert boot.seccomp_program("riscv64", 1) is None
    missing = [name for name in boot.DENY if name not in boot._X86_64]
    assert missing == [], missing  # every x86_64 name has a number; aarch64 lacks only the legacy calls
    assert {n for n in boot.DENY if n not in boot._AARCH64} <= {
        "fork",
        "vfork",
        "modify_ldt",
        "iopl",
        "ioperm",
        "uselib",
        "_sysctl",
        "create_module",
        "get_kernel_syms",
        "query_module",
    }


def _fake_run_once(results):
    """A stand-in for ``sandbox._run_once`` answering per mode (the real one for modes not in ``results``)."""
    real = sandbox._run_once

    def fake(code, stdin, timeout_s, limits, max_output_bytes, mode, disk, flags):
        if mode in results:
            return results[mode]
        return real(code, stdin, timeout_s, limits, max_output_bytes, mode, disk, flags)

    return fake


def test_probe_rejects_a_mode_in_which_extension_modules_do_not_import(monkeypatch):
    broken = sandbox.SandboxResult("ok", 0, "7 _decimal zlib\n", "", 0.1, "userns+mntns+pidns+netns+seccomp+rlimits")
    monkeypatch.setattr(sandbox, "_run_once", _fake_run_once({m: broken for m in ("nobody", "root", "self")}))
    probe = sandbox._probe()
    assert probe.mode == "none" and "mntns" not in probe.layers
    assert any("['_decimal', 'zlib']" in note for note in probe.notes), probe.notes


def test_a_setup_failure_at_run_time_falls_back_and_says_so(monkeypatch, caplog):
    if PROBE.mode == "none":
        pytest.skip("no namespace mode on this host")
    failed = sandbox.SandboxResult("error", 96, "", "", 0.0, "", setup_error="OSError: unshare: ENOSPC")
    monkeypatch.setattr(sandbox, "_run_once", _fake_run_once({PROBE.mode: failed}))
    monkeypatch.setattr(sandbox, "_warned", [])
    res = run_sandboxed("print(3)", **LIMITS)
    assert res.ok and res.stdout == "3\n" and not {"mntns", "pidns", "netns"} & set(res.isolation.split("+"))
    assert "namespace setup failed (OSError: unshare: ENOSPC)" in caplog.text
    with pytest.raises(SandboxUnavailableError, match="setup failed: OSError: unshare: ENOSPC"):
        run_sandboxed("print(3)", isolation="strict", **LIMITS)
