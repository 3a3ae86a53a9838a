"""Run untrusted (model-generated) Python in a resource-limited child process: :func:`run_sandboxed`.

Design, outermost layer first:

* **Process.** The code runs in ``sys.executable -I -S -B -X utf8`` (isolated mode: no user site, no ``PYTHON*``
  variables, no script dir on ``sys.path``; ``-S``: stdlib only, no ``.pth`` files) in a new session, so a wall-clock
  timeout kills the whole process group (``os.killpg``). The environment is rebuilt from scratch (``PATH`` plus a
  few fixed variables; ``HOME``/``TMPDIR`` point into the sandbox), the working directory is a fresh
  ``tempfile.TemporaryDirectory`` removed afterwards, and stdin/stdout/stderr are files next to (not inside) it, so
  output is bounded by ``RLIMIT_FSIZE`` and the parent never holds an unbounded pipe buffer.
* **Resource limits.** ``RLIMIT_CPU`` (``cpu_time_s``; SIGXCPU -> ``timeout``), ``RLIMIT_AS`` (``memory_mb``;
  ``MemoryError`` -> ``memory``), ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and ``RLIMIT_NPROC``. They are set by the
  child's bootstrap before any user code runs rather than in a ``preexec_fn``: CPython documents ``preexec_fn`` as
  unsafe when the parent has threads (the reward runs in worker threads, see ``composite.py``), and without it
  ``subprocess`` can use ``vfork``, which matters when the parent is a large trainer process. Hard limits are set
  too, so user code cannot raise them back. Note that ``RLIMIT_NPROC`` counts all processes of the user, not of the
  sandbox, and is ignored for root.
* **Network namespace (opportunistic).** If ``unshare -rn`` (util-linux, unprivileged user + network namespace)
  works on this host -- probed once per process -- the child runs in an empty network namespace; otherwise it falls
  back silently. :attr:`SandboxResult.isolation` records which (``"netns+audit"`` or ``"audit"``).
* **Audit-hook guard.** A bootstrap passed with ``-c`` installs a :func:`sys.addaudithook` hook and then ``exec``'s
  the user code as ``__main__``. It refuses ``socket.*`` events, process creation (``subprocess.Popen``,
  ``os.system``, ``os.exec*``, ``os.spawn*``, ``os.posix_spawn``, ``os.fork``), signals to other processes,
  ``ctypes``, importing ``_posixsubprocess``/``_ctypes``/``_ssl``/``_sqlite3``/dbm (C code that opens files or
  processes without audit events), ``gc`` object walks, and file access outside the sandbox directory: reads are
  allowed only there and under the interpreter's library dirs (``sys.path``), writes/renames/deletes only inside
  it (symlinks are resolved first). A refusal prints ``[rlkit-sandbox] refused: <event>`` to stderr and ends the
  process at once with exit code :data:`REFUSED_EXIT` (so user code cannot catch and ignore it) -> ``refused``.

**Not a security boundary.** Audit hooks are a defence-in-depth guard that stops accidental or naive misuse
(reading ``/etc/passwd``, opening a socket, spawning a shell); CPython documents that they can be bypassed by
determined code (e.g. via interpreter internals or C-level file access that raises no event, ``os.stat``/
``os.readlink`` are not audited at all). For untrusted production use, additionally run the reward worker inside a
container, nsjail, bubblewrap or a VM with no network and a read-only filesystem. Linux only; no root needed.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

STATUSES = ("ok", "error", "timeout", "memory", "refused")
REFUSED_EXIT = 97
MEMORY_EXIT = 98
MARKER = "[rlkit-sandbox]"
NOFILE_LIMIT = 64
NPROC_LIMIT = 256
MAX_WRITE_OPENS = 256

# Runs in the child as ``python -I -S -c _BOOTSTRAP <root> <code_file> <limits>``. Everything the hook needs is
# bound in a closure before the hook is installed; the user code gets fresh globals as ``__main__``.
_BOOTSTRAP = r'''
import builtins, os, resource, sys, types
def _install():
    root = os.path.realpath(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        source = f.read()
    cpu, mem, fsize, nofile, nproc, max_writes = (int(x) for x in sys.argv[3].split(","))
    for res, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
                            (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_NOFILE, nofile, nofile),
                            (resource.RLIMIT_NPROC, nproc, nproc)):
        cap = resource.getrlimit(res)[1]
        if cap != resource.RLIM_INFINITY:
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(res, (soft, hard))
    sep, realpath, fsdecode = os.sep, os.path.realpath, os.fsdecode
    write, exit_now, flush = os.write, os._exit, sys.stdout.flush
    stdlib = os.path.dirname(getattr(os, "__file__", ""))
    read_roots = tuple({realpath(p) for p in sys.path + [stdlib] if p and os.path.isdir(p)})
    wflags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny = {"os.system", "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.startfile",
            "os.kill", "os.killpg", "signal.pthread_kill", "subprocess.Popen", "gc.get_objects",
            "gc.get_referrers", "gc.get_referents"}
    deny_prefix = ("socket.", "ctypes.", "sqlite3.", "pty.", "_winapi.", "winreg.", "webbrowser.")
    deny_import = {"_posixsubprocess", "_ctypes", "ctypes", "_ssl", "_sqlite3", "_dbm", "_gdbm", "_tkinter"}
    read_events = {"os.listdir", "os.scandir", "os.listxattr", "os.getxattr"}
    write_events = {"os.chdir", "os.mkdir", "os.rmdir", "os.remove", "os.truncate", "os.chmod", "os.chown",
                    "os.utime", "os.rename", "os.link", "os.symlink", "os.setxattr", "os.removexattr",
                    "os.chflags", "os.lchflags", "shutil.copyfile", "shutil.rmtree"}
    writes = [0]

    def refuse(event, detail):
        try:
            flush()
        except BaseException:
            pass
        write(2, ("\n[rlkit-sandbox] refused: " + event + " " + detail + "\n").encode("utf-8", "replace")[:2000])
        exit_now(@REFUSED@)

    def resolve(path):
        if path is None:
            path = "."
        return realpath(fsdecode(path))

    def under(path, roots):
        return any(path == r or path.startswith(r + sep) for r in roots)

    def check_path(event, path, writing):
        if isinstance(path, int):
            return  # an already-open descriptor: it was checked when opened
        try:
            full = resolve(path)
        except BaseException:
            refuse(event, "<unresolvable path>")
        if under(full, (root,)):
            return
        if not writing and under(full, read_roots):
            return
        refuse(event, repr(full)[:300])

    def hook(event, args):
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & wflags)
            check_path(event, path, writing)
            if writing:
                writes[0] += 1
                if writes[0] > max_writes:
                    refuse(event, "too many files opened for writing")
        elif event in read_events:
            check_path(event, args[0], False)
        elif event in write_events:
            for path in args[:2] if event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile") else args[:1]:
                check_path(event, path, True)
        elif event == "import":
            if args[0] in deny_import:
                refuse(event, args[0])
        elif event in deny or event.startswith(deny_prefix):
            refuse(event, "")
        elif event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__":
            refuse(event, "__code__")

    code = compile(source, "<solution>", "exec")
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.addaudithook(hook)
    return code, main.__dict__

_code, _globals = _install()
del _install
try:
    exec(_code, _globals)
except MemoryError:
    os.write(2, b"\n[rlkit-sandbox] MemoryError\n")
    os._exit(@MEMORY@)
'''.replace("@REFUSED@", str(REFUSED_EXIT)).replace("@MEMORY@", str(MEMORY_EXIT))


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one :func:`run_sandboxed` call.

    ``status``: ``ok`` (exit 0), ``error`` (non-zero exit, uncaught exception, output limit exceeded), ``timeout``
    (wall clock or CPU limit), ``memory`` (``MemoryError`` under the address-space limit) or ``refused`` (the guard
    stopped a forbidden operation; ``refused`` then names the audit event). ``returncode`` is negative for a signal
    and ``None`` if the process could not be started. ``isolation`` is ``"netns+audit"`` or ``"audit"``.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: str = "audit"
    refused: str | None = None
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_netns_lock = threading.Lock()
_netns_state: list[bool] = []


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


def netns_available() -> bool:
    """Whether ``unshare -rn`` can start this interpreter in a fresh network namespace (probed once, cached)."""
    with _netns_lock:
        if not _netns_state:
            exe = shutil.which("unshare") if sys.platform.startswith("linux") else None
            ok = False
            if exe:
                try:
                    probe = subprocess.run(
                        [exe, "-rn", "--", sys.executable, "-I", "-S", "-c", "pass"],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        env=_child_env(tempfile.gettempdir()), timeout=10,
                    )
                    ok = probe.returncode == 0
                except (OSError, subprocess.SubprocessError):
                    ok = False
            _netns_state.append(ok)
        return _netns_state[0]


def _read(path: str, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


def _run_once(
    code: str, stdin: str, timeout_s: float, limits: str, max_output_bytes: int, use_netns: bool
) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="rlkit-sandbox-", ignore_cleanup_errors=True) as tmp:
        tmp = os.path.realpath(tmp)
        root = os.path.join(tmp, "work")
        os.mkdir(root, 0o700)
        paths = {name: os.path.join(tmp, name) for name in ("solution.py", "stdin", "stdout", "stderr")}
        with open(paths["solution.py"], "w", encoding="utf-8") as f:
            f.write(code)
        with open(paths["stdin"], "w", encoding="utf-8") as f:
            f.write(stdin)
        cmd = [sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _BOOTSTRAP, root, paths["solution.py"], limits]
        if use_netns:
            cmd = [shutil.which("unshare") or "unshare", "-rn", "--", *cmd]
        killed = False
        start = time.monotonic()
        with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb") as fout, \
                open(paths["stderr"], "wb") as ferr:
            try:
                proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=root, env=_child_env(root),
                                        start_new_session=True, close_fds=True)
            except OSError as err:
                return SandboxResult("error", None, "", f"{MARKER} could not start: {err}", 0.0,
                                     "netns+audit" if use_netns else "audit")
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                killed = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the child started a new session
                except ProcessLookupError:
                    pass
                proc.kill()  # in case it left its process group
                rc = proc.wait()
        wall = time.monotonic() - start
        out, out_trunc = _read(paths["stdout"], max_output_bytes)
        err, err_trunc = _read(paths["stderr"], max_output_bytes)
    refused = None
    if killed or rc in (-signal.SIGXCPU, -signal.SIGKILL):
        status = "timeout"
    elif rc == REFUSED_EXIT:
        status = "refused"
        tag = f"{MARKER} refused: "
        refused = err[err.rfind(tag) + len(tag):].split(" ", 1)[0].strip() if tag in err else "unknown"
    elif rc == MEMORY_EXIT or (rc != 0 and "MemoryError" in err[-2000:]):
        status = "memory"
    elif rc == 0 and not out_trunc:
        status = "ok"
    else:
        status = "error"
    return SandboxResult(status, rc, out, err, wall, "netns+audit" if use_netns else "audit", refused,
                         out_trunc or err_trunc)


def run_sandboxed(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 5.0,
    cpu_time_s: int = 5,
    memory_mb: int = 256,
    max_output_bytes: int = 65536,
    max_file_bytes: int = 1 << 20,
    netns: bool | None = None,
) -> SandboxResult:
    """Run ``code`` (Python source) in a fresh sandboxed child process; see the module docstring for the layers.

    ``stdin`` is fed to the program; ``timeout_s`` is the wall-clock limit (the process group is then killed);
    ``cpu_time_s`` (rounded up to whole seconds), ``memory_mb`` (address space) and ``max_file_bytes`` (any file
    written, stdout/stderr included) are kernel limits; stdout/stderr are cut at ``max_output_bytes`` (``truncated``
    set; stdout over the limit makes the run an ``error``). ``netns``: ``None`` uses ``unshare -rn`` when available,
    ``False`` never, ``True`` requires it (``RuntimeError`` if unavailable). Never raises for anything the code does.
    """
    if not sys.platform.startswith("linux"):
        raise RuntimeError("run_sandboxed supports Linux only")
    if not (timeout_s > 0 and cpu_time_s > 0 and memory_mb > 0 and max_output_bytes > 0 and max_file_bytes > 0):
        raise ValueError("timeout_s, cpu_time_s, memory_mb, max_output_bytes and max_file_bytes must be > 0")
    if netns and not netns_available():
        raise RuntimeError("netns=True but 'unshare -rn' is not available on this host")
    use_netns = netns_available() if netns is None else bool(netns)
    fsize = max(int(max_file_bytes), int(max_output_bytes) + 1)
    limits = ",".join(str(int(v)) for v in (
        math.ceil(cpu_time_s), int(memory_mb) << 20, fsize, NOFILE_LIMIT, NPROC_LIMIT, MAX_WRITE_OPENS))
    result = _run_once(code, stdin, float(timeout_s), limits, int(max_output_bytes), use_netns)
    if use_netns and netns is None and result.returncode == 1 and result.stderr.startswith("unshare:"):
        # unshare itself failed (e.g. user namespaces exhausted): fall back to the audit guard alone
        result = _run_once(code, stdin, float(timeout_s), limits, int(max_output_bytes), False)
    return result
