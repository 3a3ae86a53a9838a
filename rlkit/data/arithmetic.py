"""The built-in verifiable task: small-integer arithmetic with exact answers.

Every problem ``a <op> b`` with operands in ``[0, max_operand]`` is enumerated and shuffled with ``split_seed``;
the first ``n_eval`` form the held-out split, the training prompts come only from the rest (disjoint by
construction, also for SFT). Prompt ``"12+7="``, answer ``"19"``, SFT completion ``"<answer>19</answer>"``.
"""

from __future__ import annotations

import itertools
import operator
import random

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def format_completion(answer) -> str:
    return f"<answer>{answer}</answer>"


def _problems(max_operand: int, ops: tuple[str, ...], split_seed: int) -> list[tuple[str, str]]:
    bad = [o for o in ops if o not in _OPS]
    if bad:
        raise ValueError(f"unknown arithmetic ops {bad}; choose from {sorted(_OPS)}")
    probs = [(f"{a}{o}{b}=", str(_OPS[o](a, b)))
             for o in ops for a, b in itertools.product(range(max_operand + 1), repeat=2)]
    random.Random(split_seed).shuffle(probs)
    return probs


def _split(max_operand, ops, split_seed, n_eval):
    probs = _problems(max_operand, tuple(ops), split_seed)
    if n_eval >= len(probs):
        raise ValueError(f"n_eval={n_eval} leaves no training problems (only {len(probs)} exist)")
    return probs[n_eval:], probs[:n_eval]


def make_arithmetic_splits(n_train: int = 2000, n_eval: int = 200, seed: int = 0, max_operand: int = 30,
                           ops: tuple[str, ...] | list[str] = ("+", "-")):
    """``(train, eval)`` ``datasets.Dataset`` with columns ``prompt``, ``answer``; disjoint; deterministic."""
    from datasets import Dataset

    train, held = _split(max_operand, ops, seed, n_eval)
    train = train[:n_train]
    return (Dataset.from_dict({"prompt": [p for p, _ in train], "answer": [a for _, a in train]}),
            Dataset.from_dict({"prompt": [p for p, _ in held], "answer": [a for _, a in held]}))


def make_sft_dataset(n: int = 4000, seed: int = 0, label_noise: float = 0.0, split_seed: int = 0,
                     n_eval: int = 200, max_operand: int = 30, ops=("+", "-"), n_train: int | None = None):
    """Prompt-completion pairs (TRL's format) drawn with replacement from the *training* problems only.
    ``label_noise`` replaces that fraction of answers by a nearby wrong number (an imperfect teacher)."""
    from datasets import Dataset

    train, _ = _split(max_operand, ops, split_seed, n_eval)
    if n_train:
        train = train[:n_train]
    rng = random.Random(seed)
    prompts, completions = [], []
    for _ in range(n):
        p, a = train[rng.randrange(len(train))]
        if label_noise and rng.random() < label_noise:
            a = str(int(a) + rng.choice([-2, -1, 1, 2]))
        prompts.append(p)
        completions.append(format_completion(a))
    return Dataset.from_dict({"prompt": prompts, "completion": completions})
