"""Load prompt datasets with ``datasets``: jsonl/json/parquet/csv files, ``save_to_disk`` dirs, data dirs, hub ids."""

from __future__ import annotations

from pathlib import Path

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_prompt_dataset(source: str, split: str = "train", prompt_column: str = "prompt",
                        answer_column: str | None = "answer", **params):
    """A ``datasets.Dataset`` with canonical columns ``prompt`` (and ``answer``).

    ``source``: ``"arithmetic"`` (the built-in task; ``params`` go to :func:`make_arithmetic_splits`, ``split``
    picks ``train``/``eval``), a data file, a directory written by ``Dataset.save_to_disk``, a directory of data
    files, or a hub id (the same ``load_dataset`` call). Errors name the file and the missing column.
    """
    import datasets

    if source == "arithmetic":
        from .arithmetic import make_arithmetic_splits

        train, held = make_arithmetic_splits(**params)
        return train if split == "train" else held
    path = Path(source)
    if path.suffix in _FORMATS:
        if not path.is_file():
            raise FileNotFoundError(f"data file {source!r} not found")
        ds = datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train")
    elif path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{source!r} has splits {sorted(ds)}, not {split!r}")
            ds = ds[split]
    elif path.is_dir() or "/" in source and not source.startswith((".", "/")):
        ds = datasets.load_dataset(source, split=split)
    else:
        raise FileNotFoundError(f"data source {source!r} not found (a file, a dataset directory or a hub id)")
    cols = list(ds.column_names)
    for role, col in (("prompt", prompt_column), ("answer", answer_column)):
        if col is not None and col not in cols:
            raise ValueError(f"{source!r}: missing {role} column {col!r} (columns: {', '.join(cols)}); "
                             f"set data.{role}_column")
    if len(ds) == 0:
        raise ValueError(f"{source!r} is empty")
    rename = {c: r for r, c in (("prompt", prompt_column), ("answer", answer_column)) if c and c != r}
    return ds.rename_columns(rename) if rename else ds
