"""Child side of :func:`reward_models.sandbox.run_sandboxed`: the bootstrap that builds the sandbox, then runs the code.

``sandbox.py`` passes this file's *source* to ``python -I -S -B -X utf8 -c`` (it is not imported in the child), with

    argv[1:] = mode, code_file, limits, work_dir, new_root, disk_bytes, flags, status_fd

``mode`` is ``nobody`` (new user namespace whose root is uid/gid 65534 outside, mapped by a helper process that
stays in the parent namespaces; needs a privileged parent), ``self`` (new user namespace whose root is the caller's
own uid), ``root`` (real root, no user namespace: the other namespaces, then setuid 65534) or ``none`` (no
namespaces; real root still drops to 65534). ``flags`` holds ``a`` (install the audit hook), ``s`` (install the
seccomp filter) and ``S`` (strict: refuse to run the code unless namespaces and seccomp are all in place).

Namespace modes, in order (the process the parent started is "stage 0"):

1. stage 0 enters the new user namespace (``nobody``/``self``), then new mount, PID, network, IPC and UTS
   namespaces; makes every mount private; opens ``O_PATH`` descriptors to what the interpreter needs while it still
   has its original identity (the Python prefix may sit in a directory only root can search, e.g. ``/root``);
   mounts a small tmpfs on ``new_root`` and ``chdir``s into it; switches to the sandbox identity; populates it with
   read-only bind mounts (``/usr``, ``/bin``-style links, the Python prefix, ``/etc/ld.so.cache``), a synthetic
   minimal ``/etc``, ``/dev/{null,zero,full,random,urandom}``, and a size-limited tmpfs at ``work_dir`` (the only
   writable place); remounts the new root read-only and forks;
2. the child ("G") is PID 1 of the new PID namespace: it mounts a fresh ``/proc`` (PID-only subset), pivots into
   the new root and detaches the old one, drops every capability (or, in ``root`` mode, becomes uid 65534), and
   continues below; stage 0 just waits for G and exits the way G did (same exit code or same signal).

Then, in every mode: resource limits, ``PR_SET_NO_NEW_PRIVS`` plus a seccomp filter, the audit hook, a ``ready``
line on ``status_fd`` (read by the parent: it lists the layers actually in place), and the user code runs as
``__main__``. Setup failures write ``fail <reason>`` there and exit with :data:`SETUP_EXIT`.
"""

import _signal  # not `signal`: that imports enum, functools and collections (milliseconds per run)
import builtins
import os
import resource
import sys
import types

REFUSED_EXIT = 97
MEMORY_EXIT = 98
SETUP_EXIT = 96
NOBODY = 65534

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_NEWCGROUP, CLONE_THREAD = 0x02000000, 0x00010000
NS_CLONE_FLAGS = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 1024, 2048, 4096, 8192, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
ST_NOEXEC, ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 8, 1024, 2048, 4096
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
SECCOMP_MODE_FILTER = 2
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
EPERM, ENOSYS = 1, 38
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000
SIGKILL, SIGSTOP = 9, 19

# Syscall numbers (x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64: include/uapi/asm-generic/unistd.h).
_X86_64 = {
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "tkill": 200,
    "pidfd_send_signal": 424,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "chroot": 161,
    "unshare": 272,
    "setns": 308,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "statmount": 457,
    "listmount": 458,
    "open_tree_attr": 467,
    "bpf": 321,
    "perf_event_open": 298,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "socket": 41,
    "socketpair": 53,
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "execveat": 322,
    "reboot": 169,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "swapon": 167,
    "swapoff": 168,
    "settimeofday": 164,
    "clock_settime": 227,
    "clock_adjtime": 305,
    "adjtimex": 159,
    "sethostname": 170,
    "setdomainname": 171,
    "syslog": 103,
    "acct": 163,
    "quotactl": 179,
    "quotactl_fd": 443,
    "userfaultfd": 323,
    "personality": 135,
    "modify_ldt": 154,
    "iopl": 172,
    "ioperm": 173,
    "uselib": 134,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "kcmp": 312,
    "lookup_dcookie": 212,
    "fanotify_init": 300,
    "setsid": 112,
    "setpgid": 109,
    "vhangup": 153,
    "migrate_pages": 256,
    "move_pages": 279,
    "process_madvise": 440,
    "process_mrelease": 448,
    "seccomp": 317,
    "_sysctl": 156,
    "nfsservctl": 180,
    "create_module": 174,
    "get_kernel_syms": 177,
    "query_module": 178,
    # checked by argument / used by the bootstrap
    "kill": 62,
    "tgkill": 234,
    "rt_sigqueueinfo": 129,
    "rt_tgsigqueueinfo": 297,
    "clone": 56,
    "clone3": 435,
    "ioctl": 16,
    "mknod": 133,
    "mknodat": 259,
    "capset": 126,
}
_AARCH64 = {
    "ptrace": 117,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "tkill": 130,
    "pidfd_send_signal": 424,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
    "mount": 40,
    "umount2": 39,
    "pivot_root": 41,
    "chroot": 51,
    "unshare": 97,
    "setns": 268,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "statmount": 457,
    "listmount": 458,
    "open_tree_attr": 467,
    "bpf": 280,
    "perf_event_open": 241,
    "keyctl": 219,
    "add_key": 217,
    "request_key": 218,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "socket": 198,
    "socketpair": 199,
    "execve": 221,
    "execveat": 281,
    "reboot": 142,
    "kexec_load": 104,
    "kexec_file_load": 294,
    "init_module": 105,
    "finit_module": 273,
    "delete_module": 106,
    "swapon": 224,
    "swapoff": 225,
    "settimeofday": 170,
    "clock_settime": 112,
    "clock_adjtime": 266,
    "adjtimex": 171,
    "sethostname": 161,
    "setdomainname": 162,
    "syslog": 116,
    "acct": 89,
    "quotactl": 60,
    "quotactl_fd": 443,
    "userfaultfd": 282,
    "personality": 92,
    "name_to_handle_at": 264,
    "open_by_handle_at": 265,
    "kcmp": 272,
    "lookup_dcookie": 18,
    "fanotify_init": 262,
    "setsid": 157,
    "setpgid": 154,
    "vhangup": 58,
    "migrate_pages": 238,
    "move_pages": 239,
    "process_madvise": 440,
    "process_mrelease": 448,
    "seccomp": 277,
    "nfsservctl": 42,
    "kill": 129,
    "tgkill": 131,
    "rt_sigqueueinfo": 138,
    "rt_tgsigqueueinfo": 240,
    "clone": 220,
    "clone3": 435,
    "ioctl": 29,
    "mknodat": 33,
    "capset": 91,
}
ARCHES = {"x86_64": (0xC000003E, _X86_64), "aarch64": (0xC00000B7, _AARCH64)}

# Denied outright with EPERM: debugging/other processes' memory, signalling by pidfd, mounts and namespaces, kernel
# interfaces with a history of exploits (bpf, perf, keyrings, io_uring, userfaultfd), all sockets, process creation
# and exec, and host administration. kill/tgkill/rt_*sigqueueinfo are allowed only towards the process itself;
# clone only with CLONE_THREAD and no namespace flag; clone3 answers ENOSYS (glibc then falls back to clone).
DENY = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "tkill",
    "pidfd_send_signal",
    "pidfd_open",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "statmount",
    "listmount",
    "open_tree_attr",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "socket",
    "socketpair",
    "fork",
    "vfork",
    "execve",
    "execveat",
    "reboot",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "swapon",
    "swapoff",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "syslog",
    "acct",
    "quotactl",
    "quotactl_fd",
    "userfaultfd",
    "personality",
    "modify_ldt",
    "iopl",
    "ioperm",
    "uselib",
    "name_to_handle_at",
    "open_by_handle_at",
    "kcmp",
    "lookup_dcookie",
    "fanotify_init",
    "setsid",
    "setpgid",
    "vhangup",
    "migrate_pages",
    "move_pages",
    "process_madvise",
    "process_mrelease",
    "seccomp",
    "_sysctl",
    "nfsservctl",
    "create_module",
    "get_kernel_syms",
    "query_module",
)

_LD, _JEQ, _JGE, _JSET, _AND, _RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06


def seccomp_program(machine, self_pid):
    """The classic-BPF filter as ``sock_filter`` bytes for ``machine`` (``os.uname().machine``), or ``None`` for an
    architecture without a syscall table here. ``self_pid`` is the pid the signal syscalls may target."""
    if machine not in ARCHES:
        return None
    arch, nr = ARCHES[machine]
    prog, order = [], sys.byteorder

    def op(code, k, jt=0, jf=0):  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k;}, native byte order
        prog.append(code.to_bytes(2, order) + bytes((jt, jf)) + (k & 0xFFFFFFFF).to_bytes(4, order))

    eperm, allow = RET_ERRNO | EPERM, RET_ALLOW
    op(_LD, 4)  # seccomp_data.arch
    op(_JEQ, arch, 1, 0)
    op(_RET, RET_KILL_PROCESS)  # another ABI (e.g. int 0x80 on x86_64): kill
    op(_LD, 0)  # seccomp_data.nr
    if machine == "x86_64":
        op(_JGE, 0x40000000, 0, 1)  # x32 ABI numbers (and negative numbers)
        op(_RET, RET_ERRNO | ENOSYS)
    for name in DENY:
        if name in nr:
            op(_JEQ, nr[name], 0, 1)
            op(_RET, eperm)
    op(_JEQ, nr["clone3"], 0, 1)
    op(_RET, RET_ERRNO | ENOSYS)
    # clone: threads only (CLONE_THREAD set, no namespace flag); arg 0 is the flags on both architectures
    op(_JEQ, nr["clone"], 0, 5)
    op(_LD, 16)
    op(_JSET, NS_CLONE_FLAGS, 2, 0)
    op(_JSET, CLONE_THREAD, 0, 1)
    op(_RET, allow)
    op(_RET, eperm)
    # signals: only to this process (arg 0 is the pid / tgid)
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        op(_JEQ, nr[name], 0, 4)
        op(_LD, 16)
        op(_JEQ, self_pid, 0, 1)
        op(_RET, allow)
        op(_RET, eperm)
    # ioctl: no faking terminal input
    op(_JEQ, nr["ioctl"], 0, 5)
    op(_LD, 24)
    op(_JEQ, TIOCSTI, 2, 0)
    op(_JEQ, TIOCLINUX, 1, 0)
    op(_RET, allow)
    op(_RET, eperm)
    # mknod/mknodat: no device nodes (matters without a user namespace, e.g. as root in the fallback)
    for name, arg in (("mknod", 1), ("mknodat", 2)):
        if name in nr:
            op(_JEQ, nr[name], 0, 6)
            op(_LD, 16 + 8 * arg)
            op(_AND, S_IFMT)
            op(_JEQ, S_IFCHR, 2, 0)
            op(_JEQ, S_IFBLK, 1, 0)
            op(_RET, allow)
            op(_RET, eperm)
    op(_RET, allow)
    return b"".join(prog)


class _Libc:
    """The few libc calls the bootstrap needs, raising ``OSError`` on failure. Built on ``_ctypes`` directly: the
    ``ctypes`` package costs several milliseconds to import, and this runs once per sandboxed process."""

    def __init__(self):
        import _ctypes as C

        def scalar(code):
            return type("c_" + code, (C._SimpleCData,), {"_type_": code})

        self.C = C
        self.ulong, self.long, self.uint32, ushort, voidp = (scalar(c) for c in "LlIHP")
        self.char = scalar("c")
        self.fprog = type("sock_fprog", (C.Structure,), {"_fields_": [("len", ushort), ("filter", voidp)]})
        flags = C.FUNCFLAG_CDECL | C.FUNCFLAG_USE_ERRNO
        int_fn = type("int_fn", (C.CFuncPtr,), {"_flags_": flags, "_restype_": scalar("i")})
        long_fn = type("long_fn", (C.CFuncPtr,), {"_flags_": flags, "_restype_": self.long})
        lib = type("libc", (), {})()
        lib._handle = C.dlopen(None, 2)  # RTLD_NOW; the interpreter's own symbols include libc's
        try:
            int_fn(("mount", lib))
        except AttributeError:  # a statically linked interpreter
            lib._handle = C.dlopen("libc.so.6", 2)
        self._mount, self._umount2, self._unshare, self._prctl, self._sethostname = (
            int_fn((name, lib)) for name in ("mount", "umount2", "unshare", "prctl", "sethostname")
        )
        self._syscall = long_fn(("syscall", lib))
        self.table = ARCHES.get(os.uname().machine, (0, {}))[1]

    def check(self, rc, what):
        if rc != 0:
            err = self.C.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(self, src, dst, fstype, flags, data=None):
        src, dst, fstype, data = (None if s is None else os.fsencode(s) for s in (src, dst, fstype, data))
        self.check(self._mount(src, dst, fstype, self.ulong(flags), data), f"mount {os.fsdecode(dst)}")

    def umount2(self, target, flags):
        self.check(self._umount2(os.fsencode(target), flags), f"umount {target}")

    def unshare(self, flags):
        self.check(self._unshare(flags), f"unshare({flags:#x})")

    def sethostname(self, name):
        self.check(self._sethostname(name, self.ulong(len(name))), "sethostname")

    def prctl(self, option, a=0, b=0, c=0, d=0):
        u = self.ulong
        self.check(self._prctl(option, u(a), u(b), u(c), u(d)), f"prctl({option})")

    def syscall(self, name, *args):
        if name not in self.table:
            raise OSError(ENOSYS, f"{name}: no syscall number for {os.uname().machine}")
        self.check(self._syscall(self.long(self.table[name]), *args), name)

    def capset_none(self):
        """Drop every capability (effective, permitted, inheritable; ambient follows)."""
        u32x2 = type("u32x2", (self.C.Array,), {"_type_": self.uint32, "_length_": 2})
        u32x6 = type("u32x6", (self.C.Array,), {"_type_": self.uint32, "_length_": 6})
        self.syscall("capset", u32x2(0x20080522, 0), u32x6())

    def seccomp(self, prog):
        buf = type("filter", (self.C.Array,), {"_type_": self.char, "_length_": len(prog)}).from_buffer_copy(prog)
        fprog = self.fprog(len(prog) // 8, self.C.addressof(buf))
        self.prctl(PR_SET_NO_NEW_PRIVS, 1)
        self.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self.C.addressof(fprog))


def _write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _userns_nobody(libc):
    """New user namespace whose uid/gid 0 is 65534 outside; the map is written by a helper in the parent namespace
    (writing another uid than one's own needs CAP_SETUID there)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(w)
            if os.read(r, 1) == b"g":
                ppid = os.getppid()
                for name in ("uid_map", "gid_map"):
                    _write_file(f"/proc/{ppid}/{name}", f"0 {NOBODY} 1\n")
                code = 0
        finally:
            os._exit(code)
    os.close(r)
    try:
        libc.unshare(CLONE_NEWUSER)
        os.write(w, b"g")
    finally:
        os.close(w)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(EPERM, f"could not map the user namespace to uid/gid {NOBODY}")


def _userns_self(libc):
    uid, gid = os.geteuid(), os.getegid()
    libc.unshare(CLONE_NEWUSER)
    try:
        _write_file("/proc/self/setgroups", "deny")
    except FileNotFoundError:
        pass
    _write_file("/proc/self/uid_map", f"0 {uid} 1\n")
    _write_file("/proc/self/gid_map", f"0 {gid} 1\n")


def _sources():
    """``(kind, relative target, value)`` for everything bound into the new root; directories and files are opened
    ``O_PATH`` now, with the original identity."""
    out, covered = [], []
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            out.append(("link", name, os.readlink(path)))
        elif os.path.isdir(path):
            out.append(("dir", name, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))
            covered.append(path)
    wanted = [sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.__file__)] + sys.path
    for path in sorted({os.path.realpath(p) for p in wanted if p and os.path.isdir(p)}, key=len):
        if path == "/" or any(path == c or path.startswith(c + "/") for c in covered):
            continue
        out.append(("dir", path.lstrip("/"), os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))
        covered.append(path)
    for path in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.islink(path):
            out.append(("link", path[1:], os.readlink(path)))
        elif os.path.isfile(path):
            out.append(("file", path[1:], os.open(path, os.O_PATH | os.O_CLOEXEC)))
    for name in ("null", "zero", "full", "random", "urandom"):
        try:
            out.append(("dev", "dev/" + name, os.open("/dev/" + name, os.O_PATH | os.O_CLOEXEC)))
        except OSError:
            pass
    return out


def _bind(libc, fd, target, read_only):
    src = f"/proc/self/fd/{fd}"
    try:
        libc.mount(src, target, None, MS_BIND)
    except OSError as err:  # EINVAL: locked submounts below it (user namespace): take them along
        if err.errno != 22:
            raise
        libc.mount(src, target, None, MS_BIND | MS_REC)
    if read_only:
        # a remount inside a user namespace must keep the locked flags of the original mount
        f = os.statvfs(target).f_flag
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | (MS_NOEXEC if f & ST_NOEXEC else 0)
        flags |= MS_NOATIME if f & ST_NOATIME else MS_RELATIME if f & ST_RELATIME else MS_STRICTATIME
        flags |= MS_NODIRATIME if f & ST_NODIRATIME else 0
        libc.mount(None, target, None, flags)


def _populate(libc, sources, work, disk, owner):
    """Fill the new root (the current directory, a fresh tmpfs) and mount the writable work tmpfs."""
    os.makedirs("etc", exist_ok=True)
    os.makedirs("dev", exist_ok=True)
    for kind, rel, value in sources:
        parent = os.path.dirname(rel)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if kind == "link":
            os.symlink(value, rel)
        elif kind == "dir":
            os.makedirs(rel, exist_ok=True)
            _bind(libc, value, rel, True)
        else:
            os.close(os.open(rel, os.O_WRONLY | os.O_CREAT, 0o644))
            _bind(libc, value, rel, kind == "file")
        if kind != "link":
            os.close(value)
    files = {
        "etc/passwd": f"root:x:0:0:root:/:/usr/sbin/nologin\nnobody:x:{NOBODY}:{NOBODY}:nobody:/:/usr/sbin/nologin\n",
        "etc/group": f"root:x:0:\nnogroup:x:{NOBODY}:\n",
        "etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
        "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
        "etc/hostname": "sandbox\n",
    }
    for rel, text in files.items():
        fd = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, text.encode())
        os.close(fd)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, "dev/" + name)
    os.mkdir("proc")
    rel = work.lstrip("/")
    os.makedirs(rel, exist_ok=True)
    libc.mount(
        "tmpfs",
        rel,
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        f"size={disk},nr_inodes=4096,mode=0700,uid={owner},gid={owner}",
    )


def _relay(libc, pid):
    """Stage 0 after the fork: wait for the sandboxed process and end the same way (exit code or signal)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(SETUP_EXIT)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            libc.prctl(PR_SET_DUMPABLE, 0)  # no core file for the relayed signal
            if sig not in (SIGKILL, SIGSTOP):
                _signal.signal(sig, _signal.SIG_DFL)
                _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
        finally:
            os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else SETUP_EXIT)


def _reachable_by_others(path):
    """Whether any user can search every directory down to ``path`` and read it (mode bits for "others")."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(1, len(parts)):
        if not os.stat("/".join(parts[:i]) or "/").st_mode & 0o001:
            return False
    return os.stat(path).st_mode & 0o005 == 0o005


def _drop_to_nobody():
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def _enter_namespaces(libc, mode, work, new_root, disk):
    """Everything up to the user code's own process (see the module docstring). Returns the layers, in G only."""
    layers = []
    if mode == "nobody":
        _userns_nobody(libc)
        layers += ["userns", "nobody"]
    elif mode == "self":
        _userns_self(libc)
        layers.append("userns")
    elif mode != "root":
        raise ValueError(f"unknown sandbox mode {mode!r}")
    libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
    try:
        libc.sethostname(b"sandbox")
    except OSError:  # cosmetic
        pass
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    sources = _sources()
    libc.mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755,uid=0,gid=0")
    os.chdir(new_root)
    if mode == "nobody":
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)  # uid 0 here is 65534 outside
    _populate(libc, sources, work, disk, NOBODY if mode == "root" else 0)
    libc.mount(None, ".", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    pid = os.fork()
    if pid:
        _relay(libc, pid)
    # G: PID 1 of the new PID namespace; dies with stage 0
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL)
    for opts in ("subset=pid", None):  # needs a fully visible /proc, so before the old root goes away
        try:
            libc.mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts)
            break
        except OSError:
            pass
    try:
        libc.syscall("pivot_root", b".", b".")
        libc.umount2(".", MNT_DETACH)
    except OSError as err:
        if err.errno != 22:  # EINVAL: the old root is the initramfs (rootfs), which cannot be pivoted
            raise
        libc.mount(".", "/", None, MS_MOVE)
        os.chroot(".")
    os.chdir("/")
    os.chdir(work)
    if mode == "root":
        _drop_to_nobody()
        layers.append("nobody")
    else:
        libc.capset_none()  # no capabilities left in the user namespace either
    libc.prctl(PR_SET_DUMPABLE, 0)
    return layers + ["mntns", "pidns", "netns", "ipcns", "utsns"]


def _set_limits(limits, pid1):
    cpu, mem, fsize, nofile, nproc, _ = (int(x) for x in limits.split(","))
    # PID 1 of a namespace ignores SIGXCPU (default action), so there the CPU limit is a hard SIGKILL
    for res, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu if pid1 else cpu + 1),
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, nofile, nofile),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        cap = resource.getrlimit(res)[1]
        if cap != resource.RLIM_INFINITY:
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(res, (soft, hard))


def _install_seccomp(libc):
    prog = seccomp_program(os.uname().machine, os.getpid())
    if prog is None:
        raise OSError(ENOSYS, f"no seccomp syscall table for {os.uname().machine}")
    libc.seccomp(prog)


def _audit_hook(root, max_writes):
    """The audit-hook guard (a tripwire: it ends the process at the first forbidden operation it sees)."""
    sep, realpath, fsdecode = os.sep, os.path.realpath, os.fsdecode
    write, exit_now, flush = os.write, os._exit, sys.stdout.flush
    stdlib = os.path.dirname(getattr(os, "__file__", ""))
    read_roots = tuple({realpath(p) for p in sys.path + [stdlib] if p and os.path.isdir(p)})
    wflags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny = {
        "os.system",
        "os.fork",
        "os.forkpty",
        "os.exec",
        "os.spawn",
        "os.posix_spawn",
        "os.startfile",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "subprocess.Popen",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
    }
    deny_prefix = ("socket.", "ctypes.", "sqlite3.", "pty.", "_winapi.", "winreg.", "webbrowser.")
    deny_import = {"_posixsubprocess", "_ctypes", "ctypes", "_ssl", "_sqlite3", "_dbm", "_gdbm", "_tkinter"}
    read_events = {"os.listdir", "os.scandir", "os.listxattr", "os.getxattr"}
    write_events = {
        "os.chdir",
        "os.mkdir",
        "os.rmdir",
        "os.remove",
        "os.truncate",
        "os.chmod",
        "os.chown",
        "os.utime",
        "os.rename",
        "os.link",
        "os.symlink",
        "os.setxattr",
        "os.removexattr",
        "os.chflags",
        "os.lchflags",
        "shutil.copyfile",
        "shutil.rmtree",
    }
    writes = [0]

    def refuse(event, detail):
        try:
            flush()
        except BaseException:
            pass
        write(2, ("\n[rlkit-sandbox] refused: " + event + " " + detail + "\n").encode("utf-8", "replace")[:2000])
        exit_now(REFUSED_EXIT)

    def under(path, roots):
        return any(path == r or path.startswith(r + sep) for r in roots)

    def check_path(event, path, writing):
        if isinstance(path, int):
            return  # an already-open descriptor: it was checked when opened
        try:
            full = realpath(fsdecode("." if path is None else path))
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

    return hook


def main():
    mode, code_path, limits, work, new_root, disk, flags, status_fd = sys.argv[1:9]
    status_fd, disk = int(status_fd), int(disk)

    def report(line):
        try:
            os.write(status_fd, (line.replace("\n", " ")[:1000] + "\n").encode("utf-8", "replace"))
        except OSError:
            pass

    layers, notes = [], []
    try:
        with open(code_path, encoding="utf-8") as f:
            source = f.read()
        libc = None
        if mode != "none" or "s" in flags:
            try:
                libc = _Libc()
            except (OSError, AttributeError) as err:
                if mode != "none":
                    raise
                notes.append(f"ctypes: {err}")
        if mode != "none":
            layers += _enter_namespaces(libc, mode, work, new_root, disk)
        elif os.geteuid() == 0:
            stdlib = [p for p in sys.path if os.path.isdir(p)]
            try:
                if all(_reachable_by_others(p) for p in stdlib):
                    _drop_to_nobody()
                    layers.append("nobody")
                else:
                    notes.append(f"uid {NOBODY} could not read the standard library, kept uid 0")
            except OSError as err:
                notes.append(f"setuid {NOBODY}: {err}")
        _set_limits(limits, pid1=mode != "none")
        layers.append("rlimits")
    except BaseException as err:
        report(f"fail {type(err).__name__}: {err}")
        os._exit(SETUP_EXIT)
    if "s" in flags and libc is not None:
        try:
            _install_seccomp(libc)
            layers.append("seccomp")
        except OSError as err:
            notes.append(f"seccomp: {err.strerror or err}")
    if "S" in flags:
        missing = [t for t in ("mntns", "pidns", "netns", "seccomp") if t not in layers]
        if missing:
            report(f"fail strict isolation: missing {'+'.join(missing)} ({'; '.join(notes) or mode})")
            os._exit(SETUP_EXIT)
    del libc
    for name in [m for m in sys.modules if m in ("ctypes", "_ctypes")]:
        del sys.modules[name]  # so that `import _ctypes` in the user code raises its audit event again
    hook = _audit_hook(os.path.realpath(work), int(limits.rsplit(",", 1)[1])) if "a" in flags else None
    main_module = types.ModuleType("__main__")
    main_module.__builtins__ = builtins
    sys.modules["__main__"] = main_module
    try:
        code = compile(source, "<solution>", "exec")
    except MemoryError:
        os.write(2, b"\n[rlkit-sandbox] MemoryError\n")
        os._exit(MEMORY_EXIT)
    if hook is not None:
        sys.addaudithook(hook)
        layers.append("audit")
    report("ready " + " ".join(layers) + ("" if not notes else " # " + "; ".join(notes)))
    os.close(status_fd)
    os.closerange(3, 256)  # anything else inherited: only stdin/stdout/stderr remain
    del source, hook, report, layers, notes
    return code, main_module.__dict__


if __name__ == "__main__":
    _code, _globals = main()
    del main
    try:
        exec(_code, _globals)
    except MemoryError:
        os.write(2, b"\n[rlkit-sandbox] MemoryError\n")
        os._exit(MEMORY_EXIT)
