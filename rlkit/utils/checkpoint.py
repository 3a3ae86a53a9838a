"""Crash-safe checkpoint and file writes: temp file/dir in the same directory + fsync + rename.

Every writer here follows one pattern: write everything under a temporary name in the *same* directory as the
destination (so the final rename never crosses a file system), ``fsync`` the data, rename it into place with
``os.replace`` and ``fsync`` the parent directory so the rename itself is durable. Readers therefore see either the
old content or the new content, never a half-written file. Temporary names start with ``.tmp-``.

Heavy dependencies (torch, safetensors, transformers) are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "COMPLETE"
TMP_PREFIX = ".tmp-"

__all__ = [
    "COMPLETE_MARKER",
    "atomic_write_bytes",
    "atomic_write_json",
    "checkpoint_problem",
    "list_complete_checkpoints",
    "load_state_dict",
    "save_hf_checkpoint",
    "save_state_dict",
]


def _fsync_path(path: Path) -> None:
    """fsync one file, or one directory (best effort where the OS cannot open directories, e.g. Windows)."""
    if path.is_dir():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
    else:
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory bottom-up (so new entries are durable)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync_path(Path(dirpath, name))
        _fsync_path(Path(dirpath))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _temp_file_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def _replacing(path: str | os.PathLike):
    """Yield a temp file beside ``path``; on success ``os.replace`` it onto ``path`` and fsync the directory,
    on any error remove it (``path`` is never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file_beside(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``, fsync dir.

    On any error the temp file is removed and ``path`` keeps its previous content (or stays absent).
    Parent directories are created. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    with _replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Serialize ``obj`` as strict JSON (UTF-8, trailing newline) and write it with :func:`atomic_write_bytes`.

    Strict: NaN/Infinity are refused (``ValueError``) because they are not valid JSON; the write happens only after
    serialization succeeded, so a bad object never touches ``path``.
    """
    text = json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def save_state_dict(path: str | os.PathLike, state_dict: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a flat ``{name: tensor}`` dict as ``safetensors`` atomically (temp file + fsync + rename).

    Tensors are detached, moved to CPU and made contiguous; entries sharing storage (tied weights) are cloned,
    since safetensors refuses aliased tensors. For tensor state only (no optimizer objects, no Python values).
    """
    import torch
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is {type(value).__name__}, not a tensor")
        t = value.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else None
        if key is not None and key in seen:
            t = t.clone()
        elif key is not None:
            seen.add(key)
        tensors[name] = t
    with _replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        _fsync_path(tmp)
    return Path(path)


def load_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Load a ``safetensors`` file written by :func:`save_state_dict` as ``{name: tensor}`` on ``device``."""
    from safetensors.torch import load_file

    return load_file(str(path), device=device)


def _write_extra_files(root: Path, extra_files: dict[str, bytes | str]) -> None:
    for rel, content in extra_files.items():
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts or not rel_path.parts:
            raise ValueError(f"extra_files key {rel!r} must be a relative path inside the checkpoint")
        if rel_path.parts[0] == COMPLETE_MARKER:
            raise ValueError(f"extra_files may not write the {COMPLETE_MARKER!r} marker")
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        target = root / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def save_hf_checkpoint(
    model, tokenizer, path: str | os.PathLike, extra_files: dict[str, bytes | str] | None = None
) -> Path:
    """Write a Hugging Face checkpoint (safetensors weights, config, tokenizer, ``extra_files``) crash-safely.

    Steps: (1) ``model.save_pretrained`` (safetensors), ``tokenizer.save_pretrained`` (skipped if ``tokenizer`` is
    None) and ``extra_files`` (relative name -> bytes or UTF-8 str) go into ``<parent>/.tmp-<name>-<random>``;
    (2) every file and directory is fsynced; (3) the ``COMPLETE`` marker is written and fsynced last; (4) if ``path``
    exists it is renamed aside to ``<parent>/.tmp-<name>-old-<random>``; (5) the temp dir is renamed to ``path``
    and the parent fsynced; (6) the old checkpoint is deleted.

    Guarantee: at every instant, ``path`` is absent, the complete previous checkpoint, or the complete new one,
    never a partial directory. If the process dies before step 5, ``path`` is untouched, except for a crash exactly
    between steps 4 and 5: then ``path`` is absent and the intact previous checkpoint (with its ``COMPLETE``
    marker) is at ``<parent>/.tmp-<name>-old-*``; rename it back to recover. If step 5 *raises* (rather than the
    process dying), the old checkpoint is renamed back to ``path`` before the error propagates. Left-over
    ``.tmp-*`` directories are ignored by :func:`list_complete_checkpoints` and may be deleted.

    Returns ``path`` as a :class:`~pathlib.Path`; it loads with ``AutoModelForCausalLM.from_pretrained(path)`` and
    ``AutoTokenizer.from_pretrained(path)``.
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; give the directory the mode a plain mkdir would
    try:
        save_kwargs = {}
        if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
            save_kwargs["safe_serialization"] = True  # transformers 4.x; 5.x writes safetensors only
        model.save_pretrained(tmp, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra_files:
            _write_extra_files(tmp, extra_files)
        pickled = sorted(p.name for p in tmp.glob("*.bin"))
        if pickled:
            raise RuntimeError(f"save_pretrained wrote pickle weights {pickled}; expected safetensors only")
        _fsync_tree(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        sizes = {f: (tmp / f).stat().st_size for f in files}  # checked on resume: a truncated file is refused
        hashes = {f: file_sha256(tmp / f) for f in files}  # and a changed one
        marker = tmp / COMPLETE_MARKER
        marker.write_text(json.dumps({"files": files, "sizes": sizes, "sha256": hashes}) + "\n", encoding="utf-8")
        _fsync_path(marker)
        _fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    old = None
    if path.exists():
        old = parent / f"{TMP_PREFIX}{path.name}-old-{secrets.token_hex(6)}"
        try:
            os.replace(path, old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    try:
        os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            try:
                os.replace(old, path)
            except OSError as restore_err:
                raise RuntimeError(
                    f"saving {path} failed ({err!r}) and restoring the previous checkpoint failed "
                    f"({restore_err!r}); it is intact at {old}"
                ) from err
        raise
    _fsync_path(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _checkpoint_sort_key(name: str, prefix: str) -> tuple:
    rest = name[len(prefix) :]
    return (0, int(rest), name) if re.fullmatch(r"\d+", rest) else (1, 0, name)


def list_complete_checkpoints(root: str | os.PathLike, prefix: str = "step_") -> list[Path]:
    """Complete checkpoint directories ``root/<prefix>*``, sorted by their numeric suffix (``step_9`` before
    ``step_10``; non-numeric suffixes after, by name).

    Complete means: a directory whose name starts with ``prefix`` and not with ``.tmp-``, and which contains the
    ``COMPLETE`` marker file. A missing ``root`` gives ``[]``.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.name.startswith(prefix)
        and not p.name.startswith(TMP_PREFIX)
        and p.is_dir()
        and (p / COMPLETE_MARKER).is_file()
    ]
    return sorted(found, key=lambda p: _checkpoint_sort_key(p.name, prefix))


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a ``safetensors`` file, or ``None``: its header must parse and the tensors it lists must
    end exactly at the end of the file (a file cut short by a full disk or a crash fails here; nothing is loaded)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than the 8-byte header length"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if 8 + n > size:
            return f"{size} bytes, but its header alone needs {8 + n}"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "its header is not valid JSON"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "its header lists a tensor without valid data_offsets"
    if 8 + n + end != size:
        return f"{size} bytes, but its tensors need {8 + n + end}"
    return None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, hex, read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a checkpoint directory with a ``COMPLETE`` marker cannot be trusted, or ``None``: every file the marker
    lists must exist with the size and SHA-256 it records (older markers: the size only, or existence only), every
    ``*.safetensors`` file must be consistent (:func:`safetensors_problem`; an empty ``optimizer.safetensors``
    stands for no optimizer tensors) and every ``*.json`` file must parse. Reads the headers only, never the
    tensors."""
    path = Path(path)
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{COMPLETE_MARKER}: unreadable"
    sizes = marker.get("sizes") or {}
    for rel in marker.get("files", []):
        f = path / rel
        if not f.is_file():
            return f"{rel}: missing"
        if rel in sizes and f.stat().st_size != sizes[rel]:
            return f"{rel}: {f.stat().st_size} bytes, {sizes[rel]} when it was saved"
    hashes = marker.get("sha256") or {}
    for rel in marker.get("files", []):
        if rel in hashes and file_sha256(path / rel) != hashes[rel]:
            return f"{rel}: its content changed since it was saved (SHA-256 differs)"
    for f in sorted(path.rglob("*.safetensors")):
        if f.name == "optimizer.safetensors" and f.stat().st_size == 0:  # b"": an optimizer without tensor state
            continue
        problem = safetensors_problem(f)
        if problem:
            return f"{f.relative_to(path)}: {problem}"
    for f in sorted(path.rglob("*.json")):
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{f.relative_to(path)}: not valid JSON"
    return None
