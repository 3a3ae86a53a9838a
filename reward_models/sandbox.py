"""Run untrusted (model-generated) Python in an isolated, resource-limited child process: :func:`run_sandboxed`.

Layers, outermost first (the child side is :mod:`reward_models._sandbox_boot`; ``docs/sandbox.md`` has the table of
which layer stops which attack):

* **Process.** ``sys.executable -I -S -B -X utf8`` (isolated mode, stdlib only) in a new session, so a wall-clock
  timeout kills the whole process group. The environment is rebuilt from scratch (``PATH`` plus a few fixed
  variables; ``HOME``/``TMPDIR`` point at the working directory); stdin/stdout/stderr are files outside the
  working directory, so output is bounded by ``RLIMIT_FSIZE``. No ``preexec_fn`` (unsafe with threads, and it would
  rule out ``vfork``): everything below is done by the child's bootstrap before the user code runs.
* **Namespaces** (when the host allows them; probed once per process, see :func:`probe_isolation`). New user,
  mount, PID, network, IPC and UTS namespaces. The child's filesystem is a fresh read-only tmpfs root holding only
  read-only bind mounts of ``/usr`` (and the ``/bin``, ``/lib*`` links or dirs), the Python prefix and
  ``/etc/ld.so.cache``, a synthetic minimal ``/etc``, five ``/dev`` nodes, a PID-only ``/proc`` of the new PID
  namespace, and the working directory -- a size-limited tmpfs (``max_disk_bytes``), the only writable place. The
  old root is detached (``pivot_root``), so the job's files (the repository, ``/root``, ``/home``, ``/tmp``, other
  sandboxes) do not exist for the code; no other process is visible or addressable (the code is PID 1 of its
  namespace, ``getppid()`` is 0); the network namespace has no interface but a down loopback. When the parent is
  real root, the user namespace maps the sandbox to uid/gid 65534 outside (``nobody`` in ``isolation``), and every
  capability is dropped before the user code runs. Without user namespaces, real root still gets the other
  namespaces and then becomes uid 65534.
* **seccomp** (``PR_SET_NO_NEW_PRIVS`` + a classic-BPF filter, x86_64 and aarch64): ``EPERM`` for ptrace and
  ``process_vm_*``, signals to any other process (``kill``/``tgkill``/``rt_*sigqueueinfo`` only to itself,
  ``tkill`` and all ``pidfd_*``), mount/namespace calls, ``bpf``, ``perf_event_open``, keyrings, ``io_uring``,
  ``userfaultfd``, every socket, process creation (``fork``/``vfork``, ``clone`` without ``CLONE_THREAD`` or with a
  namespace flag; ``clone3`` answers ``ENOSYS`` so glibc falls back to ``clone`` for threads), ``execve``,
  ``setsid``/``setpgid``, device nodes, ``TIOCSTI``, and host administration (reboot, modules, kexec, swap, clocks,
  hostname, quotas, ...). Another syscall ABI (e.g. ``int 0x80``) kills the process (``SIGSYS`` -> ``refused``).
* **Resource limits.** ``RLIMIT_CPU`` (``cpu_time_s``; ``timeout``), ``RLIMIT_AS`` (``memory_mb``; ``memory``),
  ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, ``RLIMIT_NPROC`` (effective for the separate uid; threads), no core files.
* **Audit hook.** Installed last, before ``exec`` of the user code as ``__main__``: refuses sockets, process
  creation, signals, ``ctypes``, some C modules and file access outside the working directory, ending the process
  at once with :data:`REFUSED_EXIT` (-> ``refused``). It is a tripwire that gives a clear status for naive misuse,
  not a wall: code can get around it (calls that raise no audit event, interpreter internals). The walls are the
  namespaces and the seccomp filter.

:attr:`SandboxResult.isolation` lists the layers that were actually in place for that run, as reported by the
child after setting them up, e.g. ``"userns+nobody+mntns+pidns+netns+ipcns+utsns+seccomp+rlimits+audit"``. Where
the host refuses namespaces (or seccomp) the run falls back to what is available -- e.g. ``"nobody+seccomp+
rlimits+audit"`` or ``"seccomp+rlimits+audit"`` -- and says so; ``isolation="strict"`` refuses to run instead
(:class:`SandboxUnavailableError`). What this does not stop: kernel exploits through the syscalls that remain,
CPU/cache side channels, and resource use up to the limits. For hostile production loads add a VM or gVisor.
Linux only.
"""

from __future__ import annotations

import atexit
import logging
import marshal
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import _sandbox_boot as _boot

STATUSES = ("ok", "error", "timeout", "memory", "refused")
REFUSED_EXIT = _boot.REFUSED_EXIT
MEMORY_EXIT = _boot.MEMORY_EXIT
SETUP_EXIT = _boot.SETUP_EXIT
NOBODY = _boot.NOBODY
MARKER = "[rlkit-sandbox]"
NOFILE_LIMIT = 64
NPROC_LIMIT = 256
MAX_WRITE_OPENS = 256
ISOLATION_LEVELS = ("best_effort", "strict")
#: layers ``isolation="strict"`` requires
STRICT_LAYERS = ("mntns", "pidns", "netns", "seccomp")
#: the order of the layer names in :attr:`SandboxResult.isolation`
LAYER_ORDER = ("userns", "nobody", "mntns", "pidns", "netns", "ipcns", "utsns", "seccomp", "rlimits", "audit")
MODES = ("nobody", "root", "self", "none")

_BOOTSTRAP = Path(_boot.__file__).read_text(encoding="utf-8")
# The child loads the bootstrap precompiled (compiling its source costs more than the interpreter's start-up): a
# marshal file in a private directory of this process, written once; ``-c`` with the source is the fallback.
_LOADER = "import marshal,sys\nwith open(sys.argv.pop(1),'rb') as f: c=marshal.load(f)\ndel f\nexec(c)"
_loader_lock = threading.Lock()
_loader_state: dict[str, str] = {}
log = logging.getLogger(__name__)


def _bootstrap_argv() -> list[str]:
    with _loader_lock:
        path = _loader_state.get("path")
        if path is None or not os.path.exists(path):
            try:
                folder = tempfile.mkdtemp(prefix="rlkit-sandbox-boot-")  # mode 0700, owned by this process's user
                path = os.path.join(folder, "boot.marshal")
                with open(path, "wb") as f:
                    marshal.dump(compile(_BOOTSTRAP, "<rlkit-sandbox>", "exec"), f)
                if "path" not in _loader_state:
                    atexit.register(lambda: shutil.rmtree(os.path.dirname(_loader_state["path"]), True))
                _loader_state["path"] = path
            except OSError:
                return ["-c", _BOOTSTRAP]
    return ["-c", _LOADER, path]


class SandboxUnavailableError(RuntimeError):
    """``isolation="strict"`` (or ``namespaces=True``) asked for layers this host does not provide."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one :func:`run_sandboxed` call.

    ``status``: ``ok`` (exit 0), ``error`` (non-zero exit, uncaught exception, output limit exceeded, sandbox setup
    failure), ``timeout`` (wall clock or CPU limit), ``memory`` (``MemoryError`` under the address-space limit) or
    ``refused`` (the audit hook stopped a forbidden operation -- ``refused`` then names the audit event -- or the
    seccomp filter killed the process -- ``refused == "seccomp"``). ``returncode`` is negative for a signal and
    ``None`` if the process could not be started. ``isolation``: the layers in place (module docstring);
    ``setup_error``: why the sandbox could not be set up (then nothing of the code ran); ``notes``: why layers that
    were asked for are missing (e.g. ``"seccomp: no seccomp syscall table for riscv64"``), empty when none are.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: str = ""
    refused: str | None = None
    truncated: bool = False
    setup_error: str | None = None
    notes: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class IsolationProbe:
    """What this host allows, probed once per process (:func:`probe_isolation`): the ``mode`` runs use
    (``nobody``/``root``/``self``: namespaces; ``none``: none), the ``isolation`` string such a run reports, and
    ``notes``: why the stronger modes were not available."""

    mode: str
    isolation: str
    notes: tuple[str, ...] = ()

    @property
    def layers(self) -> frozenset[str]:
        return frozenset(self.isolation.split("+")) if self.isolation else frozenset()

    def missing(self, required=STRICT_LAYERS) -> list[str]:
        return [layer for layer in required if layer not in self.layers]


_probe_lock = threading.Lock()
_probe_state: list[IsolationProbe] = []


def _child_env(root: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": root,
        "TMPDIR": root,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def _order(layers) -> str:
    known = [layer for layer in LAYER_ORDER if layer in layers]
    return "+".join(known + sorted(set(layers) - set(LAYER_ORDER)))


def probe_isolation() -> IsolationProbe:
    """Try the namespace modes strongest first (as real root: ``nobody``, ``root``, ``self``; otherwise ``self``)
    with a trivial program, once per process (cached, thread-safe); fall back to ``none``."""
    with _probe_lock:
        if not _probe_state:
            _probe_state.append(_probe())
        return _probe_state[0]


# Extension modules (and the shared libraries they load) the probe imports in each mode: a mode in which one of
# them fails although it imports without namespaces is rejected, since it would score correct programs as wrong.
_PROBE_MODULES = (
    "math",
    "_json",
    "_decimal",
    "_heapq",
    "_bisect",
    "_random",
    "_datetime",
    "_hashlib",
    "zlib",
    "array",
    "unicodedata",
    "select",
    "_csv",
    "_pickle",
    "binascii",
    "_lzma",
    "_bz2",
    "_struct",
)
_PROBE_CODE = (
    "import importlib\nmissing = []\nfor m in %r:\n    try:\n        importlib.import_module(m)\n"
    "    except ImportError:\n        missing.append(m)\nprint(7, *missing)" % (_PROBE_MODULES,)
)


def _probe() -> IsolationProbe:
    if not sys.platform.startswith("linux"):
        return IsolationProbe("none", "", ("not Linux",))
    notes: list[str] = []
    limits = _limits(10, 512, 1 << 20)
    plain = _run_once(_PROBE_CODE, "", 30.0, limits, 1 << 16, "none", 1 << 20, "as")
    baseline = set(plain.stdout.split()[1:]) if plain.ok else set()
    candidates = ("nobody", "root", "self") if os.geteuid() == 0 else ("self",)
    for mode in candidates:
        res = _run_once(_PROBE_CODE, "", 30.0, limits, 1 << 16, mode, 1 << 20, "as")
        layers, words = set(res.isolation.split("+")), res.stdout.split()
        lost = set(words[1:]) - baseline
        if res.ok and words[:1] == ["7"] and not lost and {"mntns", "pidns", "netns"} <= layers:
            return IsolationProbe(mode, res.isolation, tuple(notes + ([res.notes] if res.notes else [])))
        if res.ok and lost:
            notes.append(f"{mode}: extension modules that do not import inside the sandbox: {sorted(lost)}")
        else:
            notes.append(f"{mode}: {res.setup_error or res.status + ' ' + res.stderr.strip()[-200:]}")
    return IsolationProbe("none", plain.isolation, tuple(notes + ([plain.notes] if plain.notes else [])))


def netns_available() -> bool:
    """Whether runs get a fresh network namespace (part of the namespace set; see :func:`probe_isolation`)."""
    return "netns" in probe_isolation().layers


def require_isolation(level: str, owner: str = "run_sandboxed") -> IsolationProbe:
    """The probe; with ``level="strict"`` raise :class:`SandboxUnavailableError` (one line) unless the host provides
    every layer of :data:`STRICT_LAYERS`."""
    if level not in ISOLATION_LEVELS:
        raise ValueError(f"isolation must be one of {ISOLATION_LEVELS}, got {level!r}")
    probe = probe_isolation()
    if level == "strict" and probe.missing():
        why = "; ".join(probe.notes) or "no namespaces"
        raise SandboxUnavailableError(
            f"{owner}: isolation='strict' needs {'+'.join(STRICT_LAYERS)} but this host provides only "
            f"{probe.isolation or 'nothing'!r} (missing {'+'.join(probe.missing())}; {why})"
        )
    return probe


def _read(path: str, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


def _limits(cpu_time_s, memory_mb, fsize, max_writes=MAX_WRITE_OPENS) -> str:
    return ",".join(
        str(int(v)) for v in (math.ceil(cpu_time_s), int(memory_mb) << 20, fsize, NOFILE_LIMIT, NPROC_LIMIT, max_writes)
    )


def _remove(tmp: str, check_mounts: bool) -> None:
    """Delete a run's folder. Without a mount namespace the code's mounts (possible only where seccomp is missing,
    as root) would be in this process's namespace: never delete through one -- leave the folder and say so."""
    if check_mounts:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mounted = [line.split()[4] for line in f if len(line.split()) > 4]
        except OSError:
            mounted = []
        inside = [m for m in mounted if m == tmp or m.startswith(tmp + "/")]
        if inside:
            log.error("sandbox: the code mounted %s; leaving %s in place", inside, tmp)
            return
    shutil.rmtree(tmp, ignore_errors=True)


def _wait(proc: subprocess.Popen, timeout_s: float) -> int:
    """``proc.wait(timeout_s)`` without its polling (sleeps of up to 50 ms between checks, which would add tens of
    milliseconds to every run): block on a pidfd instead where the kernel has them (Linux 5.3+)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout_s)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(max(1, math.ceil(timeout_s * 1000))):
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
    finally:
        os.close(fd)
    return proc.wait()


def _run_once(
    code: str, stdin: str, timeout_s: float, limits: str, max_output_bytes: int, mode: str, disk: int, flags: str
) -> SandboxResult:
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="rlkit-sandbox-"))
    try:
        root = os.path.join(tmp, "work")
        new_root = os.path.join(tmp, "root")
        os.mkdir(root, 0o700)
        if mode != "none":
            os.mkdir(new_root, 0o755)  # mount point of the sandbox's root; the code's files live in a tmpfs
        elif os.geteuid() == 0:
            try:  # the bootstrap drops to uid 65534: it must own its directory and reach it
                os.chown(root, NOBODY, NOBODY)
                os.chmod(tmp, 0o711)
            except OSError:
                pass
        paths = {name: os.path.join(tmp, name) for name in ("solution.py", "stdin", "stdout", "stderr", "status")}
        with open(paths["solution.py"], "w", encoding="utf-8") as f:
            f.write(code)
        with open(paths["stdin"], "w", encoding="utf-8") as f:
            f.write(stdin)
        cmd = [
            sys.executable,
            "-I",
            "-S",
            "-B",
            "-X",
            "utf8",
            *_bootstrap_argv(),
            mode,
            paths["solution.py"],
            limits,
            root,
            new_root,
            str(disk),
            flags,
        ]
        killed = False
        start = time.monotonic()
        wflags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        status_fd = os.open(paths["status"], wflags, 0o600)
        try:
            with (
                open(paths["stdin"], "rb") as fin,
                open(os.open(paths["stdout"], wflags, 0o600), "wb") as fout,
                open(os.open(paths["stderr"], wflags, 0o600), "wb") as ferr,
            ):
                try:
                    proc = subprocess.Popen(
                        [*cmd, str(status_fd)],
                        stdin=fin,
                        stdout=fout,
                        stderr=ferr,
                        cwd=root,
                        env=_child_env(root),
                        start_new_session=True,
                        close_fds=True,
                        pass_fds=(status_fd,),
                    )
                except OSError as exc:  # not `err`: that name holds the child's stderr below
                    return SandboxResult(
                        "error",
                        None,
                        "",
                        f"{MARKER} could not start: {exc}",
                        0.0,
                        setup_error=f"could not start: {exc}",
                    )
                finally:
                    os.close(status_fd)
                    status_fd = -1
                try:
                    rc = _wait(proc, timeout_s)
                except subprocess.TimeoutExpired:
                    killed = True
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the child started a new session
                    except ProcessLookupError:
                        pass
                    proc.kill()  # in case it left its process group
                    rc = proc.wait()
        finally:
            if status_fd >= 0:
                os.close(status_fd)
        wall = time.monotonic() - start
        out, out_trunc = _read(paths["stdout"], max_output_bytes)
        err, err_trunc = _read(paths["stderr"], max_output_bytes)
        report, _ = _read(paths["status"], 8192)
    finally:
        _remove(tmp, check_mounts=mode == "none")
    ready = [line[6:] for line in report.splitlines() if line.startswith("ready ")]
    failed = [line[5:] for line in report.splitlines() if line.startswith("fail ")]
    isolation = _order(ready[0].split(" # ")[0].split()) if ready else ""
    notes = ready[0].partition(" # ")[2].strip() if ready else ""
    refused = None
    setup_error = None
    if not ready and not killed:
        status = "error"
        setup_error = failed[0] if failed else f"the sandbox did not start (exit status {rc})"
        err = f"{MARKER} setup failed: {setup_error}\n{err}"
    elif killed or rc in (-signal.SIGXCPU, -signal.SIGKILL):
        status = "timeout"
    elif rc == -signal.SIGSYS:
        status, refused = "refused", "seccomp"
    elif rc == REFUSED_EXIT:
        status = "refused"
        tag = f"{MARKER} refused: "
        refused = err[err.rfind(tag) + len(tag) :].split(" ", 1)[0].strip() if tag in err else "unknown"
    elif rc == MEMORY_EXIT or (rc != 0 and "MemoryError" in err[-2000:]):
        status = "memory"
    elif rc == 0 and not out_trunc:
        status = "ok"
    else:
        status = "error"
    return SandboxResult(status, rc, out, err, wall, isolation, refused, out_trunc or err_trunc, setup_error, notes)


_warned: list[str] = []


def run_sandboxed(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 5.0,
    cpu_time_s: int = 5,
    memory_mb: int = 256,
    max_output_bytes: int = 65536,
    max_file_bytes: int = 1 << 20,
    max_disk_bytes: int = 16 << 20,
    isolation: str = "best_effort",
    namespaces: bool | None = None,
    netns: bool | None = None,
    audit_hook: bool = True,
    _mode: str | None = None,
) -> SandboxResult:
    """Run ``code`` (Python source) in a fresh sandboxed child process; see the module docstring for the layers.

    ``stdin`` is fed to the program; ``timeout_s`` is the wall-clock limit (the process group is then killed);
    ``cpu_time_s`` (rounded up to whole seconds), ``memory_mb`` (address space) and ``max_file_bytes`` (any file
    written, stdout/stderr included) are kernel limits; ``max_disk_bytes`` bounds the working directory (a tmpfs,
    with namespaces); stdout/stderr are cut at ``max_output_bytes`` (``truncated`` set; stdout over the limit makes
    the run an ``error``).

    ``isolation``: ``best_effort`` (default) uses the strongest mode the host allows and falls back to fewer layers
    (reported in :attr:`SandboxResult.isolation`); ``strict`` raises :class:`SandboxUnavailableError` instead of
    running the code without namespaces and seccomp. ``namespaces`` (``netns`` is its older name): ``None`` uses
    them when available, ``False`` never, ``True`` requires them. ``audit_hook=False`` leaves out the audit hook
    (only to test the layers below it). ``_mode`` forces a mode of :data:`MODES` (tests). Never raises for anything
    the code does.
    """
    if not sys.platform.startswith("linux"):
        raise RuntimeError("run_sandboxed supports Linux only")
    if not (
        timeout_s > 0
        and cpu_time_s > 0
        and memory_mb > 0
        and max_output_bytes > 0
        and max_file_bytes > 0
        and max_disk_bytes > 0
    ):
        raise ValueError(
            "timeout_s, cpu_time_s, memory_mb, max_output_bytes, max_file_bytes and max_disk_bytes must be > 0"
        )
    probe = require_isolation(isolation)
    strict = isolation == "strict"
    if namespaces is None:
        namespaces = netns
    if _mode is not None:
        if _mode not in MODES:
            raise ValueError(f"_mode must be one of {MODES}, got {_mode!r}")
        mode = _mode
    elif namespaces is False:
        if strict:
            raise SandboxUnavailableError("run_sandboxed: isolation='strict' cannot run with namespaces=False")
        mode = "none"
    else:
        mode = probe.mode
        if namespaces and mode == "none":
            raise SandboxUnavailableError(
                f"run_sandboxed: namespaces=True but this host refuses them ({'; '.join(probe.notes)})"
            )
    fsize = max(int(max_file_bytes), int(max_output_bytes) + 1)
    limits = _limits(cpu_time_s, memory_mb, fsize)
    disk = max(int(max_disk_bytes), fsize)
    flags = ("a" if audit_hook else "") + "s" + ("S" if strict else "")
    result = _run_once(code, stdin, float(timeout_s), limits, int(max_output_bytes), mode, disk, flags)
    if result.setup_error is not None:
        if strict:
            raise SandboxUnavailableError(
                f"run_sandboxed: isolation='strict': sandbox setup failed: {result.setup_error}"
            )
        if mode != "none" and _mode is None and not namespaces:
            # e.g. namespaces exhausted right now: run with the layers that need none, and say so once
            if not _warned:
                _warned.append(result.setup_error)
                log.warning("sandbox: namespace setup failed (%s); running with fewer layers", result.setup_error)
            result = _run_once(code, stdin, float(timeout_s), limits, int(max_output_bytes), "none", disk, flags)
    return result
