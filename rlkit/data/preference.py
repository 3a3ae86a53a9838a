"""Preference data for DPO: ``prompt`` / ``chosen`` / ``rejected`` rows.

Sources: a ``.jsonl``/``.json``/``.parquet`` file, a ``save_to_disk`` directory, a directory of data files or a hub
id (through ``datasets``, as :func:`rlkit.data.load_prompt_dataset`), or synthetic pairs for the built-in
arithmetic task. Values are strings; a conversational value (a list of ``{"role", "content"}`` messages, TRL's
conversational format) is accepted: a prompt keeps its messages for the chat template, a response becomes the
text of its assistant message(s).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from rlkit._extras import require

from .arithmetic import dropped_carry, format_completion, make_arithmetic_splits

COLUMNS = ("prompt", "chosen", "rejected")
NEIGHBOR_OFFSETS = (-10, -2, -1, 1, 2, 10)


def load_preference_dataset(
    source,
    prompt_column: str = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    split: str = "train",
):
    """A ``datasets.Dataset`` with exactly the columns ``prompt``, ``chosen``, ``rejected``.

    Errors: a missing file/directory -> ``FileNotFoundError`` naming it; a missing column -> ``ValueError`` naming
    the column, the source and the columns present; no rows -> ``ValueError``."""
    from .loading import FILE_FORMATS, _from_directory, _from_hub, _load, _pick_split

    datasets = require("datasets", why="dpo preference data (data.source)")

    src = os.fspath(source)
    path = Path(src).expanduser()
    suffix = path.suffix.lower()
    if suffix in FILE_FORMATS:
        if not path.is_file():
            raise FileNotFoundError(f"preference data file {src!r} not found")
        if path.stat().st_size == 0:
            raise ValueError(f"preference data {src!r} is empty (0 bytes)")
        ds = _load(src, FILE_FORMATS[suffix], data_files=str(path), split="train")
    elif path.is_dir():
        ds = _from_directory(path, src, split, {})
    elif src.startswith((".", "/", "~", "\\")) or src.count("/") > 1 or os.path.isabs(src):
        raise FileNotFoundError(f"preference data {src!r}: no such file or directory")
    else:
        ds = _from_hub(src, split, {})
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        ds = _pick_split(ds, src, split)
    cols = list(ds.column_names or [])
    wanted = {"prompt": prompt_column, "chosen": chosen_column, "rejected": rejected_column}
    for role, col in wanted.items():
        if col not in cols:
            raise ValueError(
                f"{src!r}: missing {role} column {col!r} (columns: {', '.join(cols)}); set dpo.{role}_column"
            )
    if len(set(wanted.values())) < 3:
        raise ValueError(f"{src!r}: prompt/chosen/rejected columns must differ, got {list(wanted.values())}")
    if len(ds) == 0:
        raise ValueError(f"preference data {src!r} is empty (0 rows)")
    rows = {role: [_value(v, src, col, i, role) for i, v in enumerate(ds[col])] for role, col in wanted.items()}
    return datasets.Dataset.from_dict(rows)


def _value(v, src: str, col: str, i: int, role: str):
    if isinstance(v, str):
        return v
    if isinstance(v, list) and v and all(isinstance(m, dict) and "content" in m for m in v):
        if role == "prompt":
            return [{"role": m.get("role", "user"), "content": m["content"]} for m in v]
        return "".join(m["content"] for m in v if m.get("role", "assistant") == "assistant")
    raise ValueError(
        f"{src!r}: column {col!r} row {i}: expected a string or a list of messages, got {type(v).__name__}"
    )


def wrong_answer(prompt: str, answer: str, rng: random.Random, kind: str = "neighbor") -> str:
    """A wrong answer to ``prompt``: ``dropped_carry`` (the carry-forgetting adder; only where that changes the
    answer) or else ``neighbor`` (the correct answer plus one of -10, -2, -1, 1, 2, 10). Never equals ``answer``."""
    if kind == "dropped_carry":
        wrong = dropped_carry(prompt)
        if wrong is not None and wrong != answer:
            return wrong
    elif kind != "neighbor":
        raise ValueError(f"rejected must be 'neighbor' or 'dropped_carry', got {kind!r}")
    return str(int(answer) + rng.choice(NEIGHBOR_OFFSETS))


def _pairs(problems: list[tuple[str, str]], rng: random.Random, kind: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {c: [] for c in (*COLUMNS, "answer")}
    for prompt, answer in problems:
        rows["prompt"].append(prompt)
        rows["chosen"].append(format_completion(answer))
        rows["rejected"].append(format_completion(wrong_answer(prompt, answer, rng, kind)))
        rows["answer"].append(answer)
    return rows


def make_synthetic_pairs(
    n: int = 2000,
    seed: int = 0,
    rejected: str = "neighbor",
    *,
    split_seed: int = 0,
    n_eval: int = 200,
    n_eval_pairs: int = 200,
    n_train: int | None = None,
    **task,
):
    """``(train, held_out)`` preference ``datasets.Dataset`` for the arithmetic task (columns ``prompt``, ``chosen``,
    ``rejected``, ``answer``). Chosen is the correct SFT-format completion ``"<answer>X</answer>"``, rejected the
    same format with a :func:`wrong_answer`.

    ``train``: ``n`` pairs drawn with replacement (``seed``) from the training problems of
    ``make_arithmetic_splits(n_train, n_eval, split_seed, **task)`` (the problems SFT draws from); ``held_out``:
    one pair per held-out problem (the first ``n_eval_pairs``), so no held-out prompt is ever trained on.
    Deterministic given the arguments."""
    Dataset = require("datasets", why="the arithmetic preference task").Dataset

    train, held = make_arithmetic_splits(n_train, n_eval, split_seed, **task)
    problems = list(zip(train["prompt"], train["answer"]))
    rng = random.Random(seed)
    drawn = [problems[rng.randrange(len(problems))] for _ in range(n)]
    held_problems = list(zip(held["prompt"], held["answer"]))[:n_eval_pairs]
    return (
        Dataset.from_dict(_pairs(drawn, rng, rejected)),
        Dataset.from_dict(_pairs(held_problems, random.Random(seed + 1), rejected)),
    )


def tokenize_pairs(rows, tokenizer, chat_template: bool = False, max_length: int | None = None) -> list[tuple]:
    """``[(prompt_ids, chosen_ids, rejected_ids)]``. Responses are tokenised on their own (no special tokens) and
    end with EOS, as TRL's SFT completions do; the prompt is raw text, or the chat template (``chat_template`` or
    a message-list prompt). A pair longer than ``max_length`` is a ``ValueError`` naming it (never truncated)."""
    eos = tokenizer.eos_token_id
    out = []
    for i, r in enumerate(rows):
        prompt = r["prompt"]
        if chat_template or isinstance(prompt, list):
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(f"pair {i}: a chat prompt needs a tokenizer with a chat template")
            msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            p = list(
                tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)[
                    "input_ids"
                ]
            )
        else:
            p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        c, rj = (tokenizer(r[k], add_special_tokens=False)["input_ids"] + [eos] for k in ("chosen", "rejected"))
        if max_length and len(p) + max(len(c), len(rj)) > max_length:
            raise ValueError(
                f"pair {i} ({str(prompt)[:40]!r}...) has {len(p) + max(len(c), len(rj))} tokens, more "
                f"than the model's context of {max_length}: shorten or remove it"
            )
        out.append((p, c, rj))
    return out
