"""The built-in verifiable task: small-integer arithmetic with exact answers.

A problem is ``a<op>b=`` with integer operands in ``[min_operand, max_operand]`` (``*`` uses operands up to
``max_mul_operand`` only, so products stay small); prompt ``"12+7="``, answer ``"19"``, SFT completion
``"<answer>19</answer>"``. Every problem is enumerated, the list is shuffled with the split seed, the first
``n_eval`` problems are the held-out split and the training prompts come only from the rest: the splits are
disjoint by construction (also for the SFT data) and the held-out split does not depend on ``n_train``.

Difficulty knobs: ``max_operand`` (the larger, the harder; with ``+``/``-`` the pool has
``2 * (max_operand - min_operand + 1)**2`` problems), ``ops``, ``nonnegative`` (only ``a >= b`` for ``-``),
and for the SFT warm start ``label_noise`` (fraction of deliberately wrong answers) and ``n`` (examples).
"""

from __future__ import annotations

import operator
import random

from rlkit._extras import require

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def format_completion(answer) -> str:
    """The target completion for ``answer``: ``"<answer>19</answer>"``."""
    return f"<answer>{answer}</answer>"


def problem_pool(
    max_operand: int = 30, ops=("+", "-"), min_operand: int = 0, max_mul_operand: int = 12, nonnegative: bool = False
) -> list[tuple[str, str]]:
    """Every ``(prompt, answer)`` of the task, in a fixed (unshuffled) order."""
    if isinstance(ops, str):
        ops = tuple(ops)
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ValueError(f"arithmetic ops must be a non-empty subset of {sorted(OPS)}, got {list(ops)}")
    if min_operand < 0 or max_operand < min_operand:
        raise ValueError(f"need 0 <= min_operand <= max_operand, got {min_operand} and {max_operand}")
    pool = []
    for op in dict.fromkeys(ops):  # de-duplicated, order kept
        hi = min(max_operand, max_mul_operand) if op == "*" else max_operand
        for a in range(min_operand, hi + 1):
            for b in range(min_operand, hi + 1):
                if op == "-" and nonnegative and a < b:
                    continue
                pool.append((f"{a}{op}{b}=", str(OPS[op](a, b))))
    return pool


def _split(seed: int, n_eval: int, task: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    pool = problem_pool(**task)
    random.Random(seed).shuffle(pool)
    if n_eval < 0 or n_eval >= len(pool):
        raise ValueError(
            f"n_eval={n_eval}: the task has {len(pool)} problems, n_eval must leave some for "
            f"training (raise max_operand or add ops)"
        )
    return pool[n_eval:], pool[:n_eval]


def _dataset(rows: list[tuple[str, str]], names=("prompt", "answer")):
    datasets = require("datasets", why="the arithmetic task (data.source=arithmetic)")
    return datasets.Dataset.from_dict({names[0]: [r[0] for r in rows], names[1]: [r[1] for r in rows]})


def make_arithmetic_splits(
    n_train: int | None = 2000,
    n_eval: int = 200,
    seed: int = 0,
    *,
    max_operand: int = 30,
    ops=("+", "-"),
    min_operand: int = 0,
    max_mul_operand: int = 12,
    nonnegative: bool = False,
):
    """``(train, eval)`` ``datasets.Dataset`` with string columns ``prompt`` and ``answer``.

    Deterministic given ``seed`` and the task knobs; no prompt is in both splits. ``train`` has
    ``min(n_train, pool size - n_eval)`` distinct prompts (``n_train=None``: all of them)."""
    task = dict(
        max_operand=max_operand,
        ops=ops,
        min_operand=min_operand,
        max_mul_operand=max_mul_operand,
        nonnegative=nonnegative,
    )
    train, held = _split(seed, n_eval, task)
    if n_train is not None:
        if n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {n_train}")
        train = train[:n_train]
    return _dataset(train), _dataset(held)


def dropped_carry(prompt: str) -> str | None:
    """The answer of an adder that forgets every carry (``17+25=`` -> ``"32"``); ``None`` unless ``a+b`` with
    non-negative operands."""
    body = prompt.rstrip("=")
    if body.count("+") != 1:
        return None
    a, b = (int(x) for x in body.split("+"))
    if a < 0 or b < 0:
        return None
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return str(out)


def make_sft_dataset(
    n: int = 4000,
    seed: int = 0,
    label_noise: float = 0.0,
    *,
    split_seed: int = 0,
    n_eval: int = 200,
    n_train: int | None = None,
    max_operand: int = 30,
    ops=("+", "-"),
    min_operand: int = 0,
    max_mul_operand: int = 12,
    nonnegative: bool = False,
    noise: str = "neighbor",
):
    """``n`` prompt-completion pairs (TRL ``SFTTrainer``'s prompt-completion format: columns ``prompt``,
    ``completion`` = ``"<answer>X</answer>"``), drawn with replacement (``seed``) from the *training* problems
    of ``make_arithmetic_splits(n_train, n_eval, split_seed, ...)`` only: the held-out prompts never appear.

    ``label_noise``: the fraction of examples whose answer the imperfect teacher gets wrong, which leaves the SFT
    model room for RL to improve. ``noise="neighbor"``: a nearby wrong number (off by 1, 2 or 10);
    ``noise="dropped_carry"``: the systematic error of forgetting carries (only problems with a carry change;
    others keep their correct answer), a rule that RL with a verifiable reward can unlearn."""
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if noise not in ("neighbor", "dropped_carry"):
        raise ValueError(f"noise must be 'neighbor' or 'dropped_carry', got {noise!r}")
    train, _ = make_arithmetic_splits(
        n_train,
        n_eval,
        split_seed,
        max_operand=max_operand,
        ops=ops,
        min_operand=min_operand,
        max_mul_operand=max_mul_operand,
        nonnegative=nonnegative,
    )
    problems = list(zip(train["prompt"], train["answer"]))
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, answer = problems[rng.randrange(len(problems))]
        if label_noise and rng.random() < label_noise:
            if noise == "dropped_carry":
                answer = dropped_carry(prompt) or answer
            else:
                answer = str(int(answer) + rng.choice((-10, -2, -1, 1, 2, 10)))
        rows.append((prompt, format_completion(answer)))
    return _dataset(rows, names=("prompt", "completion"))
