"""Load prompt datasets through ``datasets``: data files, ``save_to_disk`` directories, data directories,
hub ids, and the built-in ``arithmetic`` task. The result always has the canonical columns ``prompt`` and
(unless ``answer_column=None``) ``answer``; numeric answers are cast to strings."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from rlkit._extras import require

#: file suffix -> ``datasets`` packaged builder
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
BUILTIN = ("arithmetic",)
EVAL_SPLITS = ("eval", "test", "validation", "held_out", "heldout")


def load_prompt_dataset(
    source, split: str = "train", prompt_column: str = "prompt", answer_column: str | None = "answer", **kwargs
):
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
    datasets = require("datasets", why="data.source")

    src = os.fspath(source)
    if src in BUILTIN:
        ds = _builtin(src, split, kwargs)
    else:
        path = Path(src).expanduser()
        suffix = path.suffix.lower()
        if suffix in FILE_FORMATS:
            _check_file(path, src)
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


def peek_prompt_dataset(
    source, prompt_column: str = "prompt", answer_column: str | None = "answer", rows: int = 100, split: str = "train"
):
    """The first ``rows`` rows of ``source`` as a ``datasets.Dataset``, through the checks of
    :func:`load_prompt_dataset` (file exists, parses, has the columns, no null or empty prompt), reading only what
    that needs: a data file or data directory is streamed and nothing is written to the cache (``rlkit check``).
    ``None`` for what is not read here: the built-in task and hub ids (no download)."""
    import itertools

    datasets = require("datasets", why="data.source")
    from datasets.exceptions import DatasetGenerationError

    src = os.fspath(source)
    if src in BUILTIN:
        return None
    path = Path(src).expanduser()
    suffix = path.suffix.lower()
    if suffix in FILE_FORMATS:
        _check_file(path, src)
        stream = _load(src, FILE_FORMATS[suffix], data_files=str(path), split="train", streaming=True)
    elif path.is_dir():
        saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
        if saved:  # memory-mapped: loading it reads nothing but the metadata
            return load_prompt_dataset(src, split, prompt_column, answer_column)
        if not any(p.is_file() for p in path.rglob("*")):
            raise ValueError(f"data source {src!r} is an empty directory")
        stream = _load(src, str(path), split=split, streaming=True)
    elif src.startswith((".", "/", "~", "\\")) or src.count("/") > 1 or os.path.isabs(src):
        raise FileNotFoundError(f"data source {src!r}: no such file or directory")
    else:
        return None
    try:
        with _quiet_datasets():
            head = list(itertools.islice(stream, rows))
    except (DatasetGenerationError, ValueError, TypeError, KeyError) as err:  # pyarrow's ArrowInvalid included
        cause = err.__cause__ if isinstance(err, DatasetGenerationError) and err.__cause__ else err
        raise ValueError(
            _bad_json_line(src) or f"data source {src!r} could not be read: {type(cause).__name__}: {cause}"
        ) from err
    if not head:
        raise ValueError(f"data source {src!r} is empty (0 rows)")
    return _canonical(datasets.Dataset.from_list(head), src, prompt_column, answer_column)


def _check_file(path: Path, src: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"data file {src!r} not found" + (" (it is a directory)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise ValueError(f"data source {src!r} is empty (0 bytes)")


def _builtin(src, split, kwargs):
    from .arithmetic import make_arithmetic_splits

    train, held = make_arithmetic_splits(**kwargs)
    if split == "train":
        return train
    if split in EVAL_SPLITS:
        return held
    raise ValueError(f"data source {src!r} has splits 'train' and 'eval' (also called test/validation), not {split!r}")


def _from_directory(path: Path, src: str, split: str, kwargs):
    import datasets

    saved = (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )
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
        with _quiet_datasets():
            return datasets.load_dataset(*args, **kwargs)
    except DatasetGenerationError as err:
        cause = err.__cause__ or err
        raise ValueError(
            _bad_json_line(src) or f"data source {src!r} could not be read: {type(cause).__name__}: {cause}"
        ) from err
    except ValueError as err:
        if "corresponds to no data" in str(err):
            raise ValueError(f"data source {src!r} is empty (0 rows)") from err
        bad = _bad_json_line(src)
        if bad:
            raise ValueError(bad) from err
        raise


@contextlib.contextmanager
def _quiet_datasets():
    """No ``datasets`` log lines while reading (its "Failed to load JSON ..." would come before the error rlkit
    raises in its place, naming the file line)."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _bad_json_line(src: str) -> str | None:
    """For a ``.jsonl`` (or line-delimited ``.json``) file: the first line that is not a JSON object, by its
    1-based line number in the file (blank lines count, though the loader skips them); ``None`` if every line
    parses (or ``src`` is no such file). For a ``.json`` document: where it stops parsing."""
    import json

    path = Path(src).expanduser()
    if path.suffix.lower() not in (".jsonl", ".json") or not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        return f"data source {src!r} is not UTF-8 text ({err.reason} at byte {err.start})"
    if path.suffix.lower() == ".json":
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as err:
            first = next((ln for ln in text.splitlines() if ln.strip()), "")
            try:  # one object per line, named .json: check it line by line below
                if not isinstance(json.loads(first), dict):
                    raise ValueError
            except ValueError:
                return f"data source {src!r} line {err.lineno}, column {err.colno}: not valid JSON: {err.msg}"
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return f"data source {src!r} line {n}: not valid JSON: {err.msg} (column {err.colno})"
        if not isinstance(row, dict):
            return f"data source {src!r} line {n}: expected a JSON object, got a {type(row).__name__}"
    return None


def _from_hub(src: str, split: str, kwargs):
    try:
        return _load(src, src, split=split, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError) as err:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or os.environ.get(
            "HF_DATASETS_OFFLINE", ""
        ).lower() in ("1", "true", "yes", "on"):
            raise FileNotFoundError(
                f"data source {src!r}: not a local file or directory, and the hub is offline "
                f"(HF_HUB_OFFLINE) with no cached copy"
            ) from err
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
            raise ValueError(
                f"{src!r}: missing {role} column {col!r} (columns: {', '.join(cols)}); set data.{role}_column"
            )
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
    _check_values(ds, src, prompt_column, answer_column)
    return ds


def _check_values(ds, src: str, prompt_column: str, answer_column: str | None) -> None:
    """Every prompt a non-empty string and no answer null, else ``ValueError`` naming the source, where (see
    :func:`_where`) and the column (a null prompt used to crash the tokenizer, an empty one to train silently)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for role, col in (("prompt", prompt_column), ("answer", answer_column)):
        if col is None:
            continue
        values = ds.with_format("arrow")[role]
        if isinstance(values, pa.Table):
            values = values.column(0)
        typ = values.type
        null = pc.is_null(values)
        bad = pc.index(null, True).as_py()
        if bad >= 0:
            raise ValueError(
                f"{src!r} {_where(src, bad)}: column {col!r} is null "
                + ("(every prompt must be a non-empty string)" if role == "prompt" else "(every row needs a value)")
            )
        if role != "prompt":
            continue
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise ValueError(f"{src!r}: column {col!r} holds {typ} values, not text (a prompt must be a string)")
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0)
        bad = pc.index(empty, True).as_py()
        if bad >= 0:
            raise ValueError(
                f"{src!r} {_where(src, bad)}: column {col!r} is empty (every prompt must be a non-empty string)"
            )


def _where(src: str, row: int) -> str:
    """Where row ``row`` (0-based) of ``src`` is, for a person opening the file: ``line N`` of a ``.jsonl`` (blank
    lines counted) or ``.csv`` (the header is line 1) file, ``record N`` of a ``.json`` array, else ``row N``."""
    path = Path(src).expanduser()
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json") and path.is_file():
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if suffix == ".json" and text.lstrip().startswith("["):
                return f"record {row + 1}"
            seen = -1
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    seen += 1
                    if seen == row:
                        return f"line {n}"
        if suffix == ".csv" and path.is_file():
            import csv

            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                next(reader, None)  # the header
                for i, _ in enumerate(reader):
                    if i == row:
                        return f"line {reader.line_num}"
    except (OSError, UnicodeDecodeError):
        pass
    return f"row {row + 1}"
