"""Load prompt datasets through ``datasets``: data files, ``save_to_disk`` directories, data directories,
hub ids, and the built-in ``arithmetic`` task. The result always has the canonical columns ``prompt`` and
(unless ``answer_column=None``) ``answer``; numeric answers are cast to strings."""

from __future__ import annotations

import os
from pathlib import Path

#: file suffix -> ``datasets`` packaged builder
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
BUILTIN = ("arithmetic",)
EVAL_SPLITS = ("eval", "test", "validation", "held_out", "heldout")


def load_prompt_dataset(source, split: str = "train", prompt_column: str = "prompt",
                        answer_column: str | None = "answer", **kwargs):
    """A ``datasets.Dataset`` with columns ``prompt`` (and ``answer``), other columns kept.

    ``source``:

    * ``"arithmetic"``: the built-in task; ``kwargs`` go to :func:`rlkit.data.make_arithmetic_splits`
      and ``split`` is ``"train"`` or a held-out name (``eval``/``test``/``validation``);
    * a ``.jsonl``/``.json``/``.parquet``/``.csv`` file (all rows; ``split`` is ignored);
    * a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``load_from_disk``;
      ``split`` picks from a ``DatasetDict``);
    * a directory of data files, or a hub id: ``datasets.load_dataset(source, split=split, **kwargs)``
      (``kwargs`` e.g. ``name=``, ``revision=``, ``data_files=``).

    ``prompt_column`` / ``answer_column`` are renamed to ``prompt`` / ``answer``. Errors: a missing file or
    directory -> ``FileNotFoundError`` naming it; a missing column -> ``ValueError`` naming the column, the
    source and the columns present; no rows -> ``ValueError`` naming the source.
    """
    import datasets

    src = os.fspath(source)
    if src in BUILTIN:
        ds = _builtin(src, split, kwargs)
    else:
        path = Path(src).expanduser()
        suffix = path.suffix.lower()
        if suffix in FILE_FORMATS:
            if not path.is_file():
                raise FileNotFoundError(f"data file {src!r} not found" + (" (it is a directory)" if path.is_dir()
                                                                           else ""))
            if path.stat().st_size == 0:
                raise ValueError(f"data source {src!r} is empty (0 bytes)")
            ds = _load(src, FILE_FORMATS[suffix], data_files=str(path), split="train", **kwargs)
        elif path.is_dir():
            ds = _from_directory(path, src, split, kwargs)
        elif src.startswith((".", "/", "~", "\\")) or src.count("/") > 1 or os.path.isabs(src):
            raise FileNotFoundError(f"data source {src!r}: no such file or directory")
        else:  # a hub id: the same load_dataset call as a local data directory
            ds = _from_hub(src, split, kwargs)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        ds = _pick_split(ds, src, split)
    return _canonical(ds, src, prompt_column, answer_column)


def _builtin(src, split, kwargs):
    from .arithmetic import make_arithmetic_splits

    train, held = make_arithmetic_splits(**kwargs)
    if split == "train":
        return train
    if split in EVAL_SPLITS:
        return held
    raise ValueError(f"data source {src!r} has splits 'train' and 'eval' (also called test/validation), "
                     f"not {split!r}")


def _from_directory(path: Path, src: str, split: str, kwargs):
    import datasets

    saved = (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    if saved:
        if kwargs:
            raise TypeError(f"{src!r} is a save_to_disk directory; load options {sorted(kwargs)} do not apply")
        return datasets.load_from_disk(str(path))
    if not any(p.is_file() for p in path.rglob("*")):
        raise ValueError(f"data source {src!r} is an empty directory")
    return _load(src, str(path), split=split, **kwargs)


def _load(src: str, *args, **kwargs):
    """``datasets.load_dataset`` with its empty-data and parse errors turned into errors naming ``src``."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    try:
        return datasets.load_dataset(*args, **kwargs)
    except DatasetGenerationError as err:
        cause = err.__cause__ or err
        raise ValueError(f"data source {src!r} could not be read: {type(cause).__name__}: {cause}") from err
    except ValueError as err:
        if "corresponds to no data" in str(err):
            raise ValueError(f"data source {src!r} is empty (0 rows)") from err
        raise


def _from_hub(src: str, split: str, kwargs):
    try:
        return _load(src, src, split=split, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError) as err:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
                os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise FileNotFoundError(f"data source {src!r}: not a local file or directory, and the hub is offline "
                                    f"(HF_HUB_OFFLINE) with no cached copy") from err
        raise


def _pick_split(dsd, src: str, split: str):
    if split in dsd:
        return dsd[split]
    raise ValueError(f"data source {src!r} has splits {sorted(dsd)}, not {split!r}")


def _canonical(ds, src: str, prompt_column: str, answer_column: str | None):
    from datasets import Value

    cols = list(ds.column_names or [])
    if len(ds) == 0:
        raise ValueError(f"data source {src!r} is empty (0 rows)")
    for role, col in (("prompt", prompt_column), ("answer", answer_column)):
        if col is not None and col not in cols:
            raise ValueError(f"{src!r}: missing {role} column {col!r} (columns: {', '.join(cols)}); "
                             f"set data.{role}_column")
    if answer_column is not None and answer_column == prompt_column:
        raise ValueError(f"{src!r}: prompt_column and answer_column are both {prompt_column!r}")
    wanted = {prompt_column: "prompt"}
    if answer_column is not None:
        wanted[answer_column] = "answer"
    # a column already called "prompt"/"answer" that is not the chosen one would clash with the rename
    clash = [c for c in ("prompt", "answer") if c in cols and c in wanted.values() and c not in wanted]
    if clash:
        ds = ds.remove_columns(clash)
    rename = {c: r for c, r in wanted.items() if c != r}
    if rename:
        ds = ds.rename_columns(rename)
    if answer_column is not None:
        feat = ds.features["answer"]
        if isinstance(feat, Value) and feat.dtype != "string":
            ds = ds.cast_column("answer", Value("string"))
    return ds
