"""DPH-RL rehearsal: divergences on responses pre-sampled from the initial policy (``rehearsal:`` recipe section).

Paper: "The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse in Reinforcement Learning with
Verifiable Reward" (DPH-RL, arXiv 2509.07430); reference code: seamoke/DPH-RL, a verl fork. Direction convention:
forward KL is ``KL(pi_ref || pi_theta)`` (mass-covering), and the reference is the initial (warm-started) policy
``pi_0``.

1. **Pre-sampling** (:func:`prepare_rehearsal`, before the first RL step): every training prompt (or the first
   ``rehearsal.max_prompts``) is sampled ``k`` times by ``pi_0`` through the rollout and reward workers, at the
   rollout temperature ``T`` with no top-p / top-k truncation (the estimators assume samples from ``pi_0`` itself).
   Prompts solved k/k form the rehearsal ("perfect") set ``D_pef``: their ``k`` correct responses are kept together
   with ``log pi_0(o_t)`` at temperature ``T`` from the reference worker (the quantity ``ref_logprobs`` means for the
   on-policy regularizers). The other prompts, and any not pre-sampled, form ``D_exp``
   (:func:`split_by_correctness`). The set is cached as JSON in ``<output_dir>/rehearsal/presample.json``; a
   ``--resume`` loads it instead of sampling again (the policy is no longer ``pi_0`` by then).
2. **Training**: GRPO draws its prompts from ``D_exp`` only. Every step also sends ``rehearsal.responses_per_step``
   stored responses (:meth:`RehearsalSet.batch`); the learner adds, in the same optimizer step,
   ``sum_r coef_r * mean_tokens g_r(u)`` over them (:func:`rlkit.objectives.rehearsal.rehearsal_loss`),
   ``u = pi_theta(o_t) / pi_0(o_t)``, for each regularizer configured with ``samples: reference``; ``g_r`` is the
   reference-sample estimator of :func:`rlkit.functional.f_divergence_sampled` (forward KL: ``u - log u - 1``, whose
   value is unbiased for ``KL(pi_0 || pi_theta)`` per token and whose gradient ``(u - 1) grad log pi_theta`` is, in
   expectation over ``pi_0``'s samples, exactly the forward-KL gradient; ``js``: the standard JS, <= log 2).
   Regularizers on policy samples keep applying to the GRPO batch.

Where rlkit differs from the reference code, on purpose:

* the split: the reference code put a prompt in the perfect set when the first 4 of its 8 samples were all correct,
  then generated the stored responses in a second pass (one sample per prompt, correct ones kept); here the
  criterion is k/k and the stored responses are those same k correct samples;
* the stored log-probs: the reference code took the actor's log-probs at the start (the same weights); here they
  come from the reference worker serving ``pi_0`` at the training temperature, as for every other regularizer;
* the rehearsal batch: the reference code appended 256 stored responses to each RL batch of 128 prompts x 16
  samples and let them flow through verl's mini-batch split (so their weight in each update depended on where they
  landed); here they are an explicit term ``coef * token-mean`` added to every update of the step (split across
  ``grpo.minibatches`` like the GRPO rows). The default ``responses_per_step`` keeps the reference code's ratio:
  one rehearsal response per 8 GRPO rows;
* the forward-KL clamp: verl clamps the k3 value to [-10, 10]; here the log-ratio is clamped at the regularizer's
  ``log_ratio_clamp`` (20) and the value is not clamped.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlkit.types import RehearsalBatch

CACHE_FILE = Path("rehearsal") / "presample.json"


def split_by_correctness(correct: Sequence[Sequence[bool]]) -> tuple[list[int], list[int]]:
    """``(perfect, explore)`` positions of prompts given the correctness of each prompt's k samples: a prompt is
    perfect (rehearsal set ``D_pef``) when all its samples are correct, else it is for exploration (``D_exp``).
    A prompt with no samples is refused (there is nothing to judge it by)."""
    perfect: list[int] = []
    explore: list[int] = []
    for i, oks in enumerate(correct):
        if len(oks) == 0:
            raise ValueError(f"prompt {i} has no samples: cannot tell whether the initial policy solves it")
        (perfect if all(oks) else explore).append(i)
    return perfect, explore


def default_responses_per_step(prompts_per_step: int, group_size: int) -> int:
    """The reference code's ratio: 256 rehearsal responses next to 128 prompts x 16 samples, i.e. one per 8 GRPO
    rows (at least 1)."""
    return max(1, round(prompts_per_step * group_size / 8))


def rehearsal_indices(n_pool: int, per_step: int, step: int, seed: int) -> list[int]:
    """The pool rows of a step: the pool is walked in shuffled passes (a fresh permutation per pass, seeded by
    ``seed`` and the pass number), ``per_step`` rows per step, so every stored response is used once per pass.
    Stateless: a resumed run draws the same rows for the same step."""
    if n_pool <= 0:
        return []
    out, perms = [], {}
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, j = divmod(pos, n_pool)
        if epoch not in perms:
            perm = list(range(n_pool))
            random.Random(seed * 1_000_003 + epoch).shuffle(perm)
            perms[epoch] = perm
        out.append(perms[epoch][j])
    return out


@dataclass
class RehearsalSet:
    """The pre-sampled split: ``perfect``/``explore`` are indices into the training prompts; ``responses`` are the
    stored correct ``pi_0`` responses of the perfect prompts, each ``{"prompt": index, "prompt_ids",
    "completion_ids", "ref_logprobs"}`` (``ref_logprobs``: ``log pi_0`` at the training temperature, one per
    completion token)."""

    perfect: list[int]
    explore: list[int]
    responses: list[dict]
    presampled: int
    presample_s: float
    key: dict = field(default_factory=dict)
    #: how many of its k samples were correct, per pre-sampled prompt (to choose k for a task)
    counts: list[int] = field(default_factory=list)

    def histogram(self, k: int) -> str:
        """``"0/k: n0, 1/k: n1, ..."``: pre-sampled prompts by number of correct samples."""
        return ", ".join(f"{j}/{k}: {self.counts.count(j)}" for j in range(k + 1))

    def metrics(self) -> dict[str, float]:
        return {
            "rehearsal/set_size": float(len(self.perfect)),
            "rehearsal/explore_size": float(len(self.explore)),
            "rehearsal/responses": float(len(self.responses)),
            "rehearsal/presampled": float(self.presampled),
            "rehearsal/presample_s": float(self.presample_s),
        }

    def batch(self, step: int, per_step: int, seed: int) -> RehearsalBatch | None:
        """The step's rows for the learner (:attr:`rlkit.types.TrainBatch.rehearsal`); None when the set is empty."""
        rows = [self.responses[i] for i in rehearsal_indices(len(self.responses), per_step, step, seed)]
        if not rows:
            return None
        return RehearsalBatch(
            prompt_ids=[r["prompt_ids"] for r in rows],
            completion_ids=[r["completion_ids"] for r in rows],
            ref_logprobs=[r["ref_logprobs"] for r in rows],
            prompts=[r["prompt"] for r in rows],
        )

    def to_json(self) -> dict:
        return {
            "format": 1,
            "key": self.key,
            "perfect": self.perfect,
            "explore": self.explore,
            "presampled": self.presampled,
            "presample_s": self.presample_s,
            "counts": self.counts,
            "responses": self.responses,
        }

    @classmethod
    def from_json(cls, obj: dict) -> RehearsalSet:
        return cls(
            perfect=obj["perfect"],
            explore=obj["explore"],
            responses=obj["responses"],
            presampled=obj["presampled"],
            presample_s=obj["presample_s"],
            key=obj["key"],
            counts=obj.get("counts", []),
        )


def cache_key(recipe, init_path: str, prompts: Sequence[str]) -> dict:
    """What the pre-sampled set depends on; a cache with another key is not reused."""
    rh, ro = recipe.rehearsal, recipe.rollout
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    return {
        "k": rh.k,
        "max_prompts": rh.max_prompts,
        "seed": recipe.seed,
        "initial_model": str(init_path),
        "temperature": ro.temperature,
        "max_new_tokens": ro.max_new_tokens,
        "n_prompts": len(prompts),
        "prompts_sha256": digest,
    }


def presample(
    rollout,
    reward,
    reference,
    rows: Sequence[dict],
    encode,
    k: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    chunk: int = 64,
    on_restart=None,
    version: int | None = None,
) -> tuple[list[list[bool]], list[dict]]:
    """Sample each row's prompt ``k`` times with the rollout workers (which must hold ``pi_0``), score the samples
    with the reward worker, and fetch ``log pi_0`` of the samples of prompts solved k/k from ``reference`` (a
    reference worker, or a LoRA learner serving ``initial``). Returns the per-prompt correctness and the stored
    responses (``prompt`` is the position in ``rows``)."""
    from rlkit.workers.local import get

    from .evaluate import correctness, generate

    correct: list[list[bool]] = []
    stored: list[dict] = []
    for c0 in range(0, len(rows), chunk):
        part = rows[c0 : c0 + chunk]
        params = dict(n=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0, top_k=0, seed=seed + c0)
        comps = generate(rollout, encode([r["prompt"] for r in part]), params, on_restart=on_restart, version=version)
        scored = get(
            reward.score.remote(
                [r["prompt"] for r in part for _ in range(k)],
                [c["text"] for c in comps],
                [r["answer"] for r in part for _ in range(k)],
            )
        )
        ok = correctness(scored["components"])
        groups = [ok[i * k : (i + 1) * k] for i in range(len(part))]
        correct.extend(groups)
        perfect, _ = split_by_correctness(groups)
        keep = [(c0 + i, comps[i * k + j]) for i in perfect for j in range(k) if comps[i * k + j]["token_ids"]]
        if not keep:
            continue
        ref = get(
            reference.compute.remote([c["prompt_ids"] for _, c in keep], [c["token_ids"] for _, c in keep], False)
        )["logprobs"]
        for row, (i, c) in enumerate(keep):
            n = len(c["token_ids"])
            stored.append(
                {
                    "prompt": i,
                    "prompt_ids": list(c["prompt_ids"]),
                    "completion_ids": list(c["token_ids"]),
                    "ref_logprobs": [float(x) for x in ref[row, :n].tolist()],
                }
            )
    return correct, stored


def _load_cached(path: Path, key: dict, console) -> RehearsalSet:
    """A resumed run's rehearsal set, from ``path``: it must exist (it came from the initial policy, which the
    resumed weights no longer are) and have been made with the same settings (``key``)."""
    import json

    from .faults import TrainingError

    if not path.exists():
        raise TrainingError(
            f"rehearsal: resuming, but the pre-sampled set {path} is missing; it must come from "
            "the initial policy, which the resumed weights no longer are: start a new run"
        )
    found = RehearsalSet.from_json(json.loads(path.read_text()))
    if found.key != key:
        diff = sorted(k for k in key if found.key.get(k) != key[k])
        raise TrainingError(
            f"rehearsal: the cached pre-sampled set {path} was made with other settings "
            f"({', '.join(diff)} differ); resume with the recipe that made it, or start a new run"
        )
    console.print(
        f"rehearsal: loaded the pre-sampled set from {path}: D_pef {len(found.perfect)} prompts "
        f"({len(found.responses)} responses), D_exp {len(found.explore)} prompts"
    )
    return found


def prepare_rehearsal(
    recipe,
    out: Path,
    train,
    encode,
    rollout,
    reward,
    reference,
    init_path: str,
    resume: bool,
    console,
    on_restart=None,
    version: int | None = None,
) -> RehearsalSet:
    """The rehearsal split for a run: loaded from ``<out>/rehearsal/presample.json`` when resuming (its key must
    match the recipe), else pre-sampled now with ``pi_0`` and cached. Prints the time and both set sizes."""
    from rlkit.utils.checkpoint import atomic_write_json

    from .faults import TrainingError

    rh = recipe.rehearsal
    n = len(train) if rh.max_prompts is None else min(rh.max_prompts, len(train))
    rows = [train[i] for i in range(n)]
    key = cache_key(recipe, init_path, [r["prompt"] for r in rows])
    path = Path(out) / CACHE_FILE
    if resume:
        return _load_cached(path, key, console)
    if reference is None:
        raise TrainingError("rehearsal: no worker serves the initial policy's log-probs")
    console.print(f"rehearsal: pre-sampling {n} of {len(train)} training prompts x {rh.k} with the initial policy")
    t = time.time()
    correct, stored = presample(
        rollout,
        reward,
        reference,
        rows,
        encode,
        rh.k,
        recipe.rollout.max_new_tokens,
        recipe.rollout.temperature,
        seed=(recipe.seed + 1) * 7_919_003,
        chunk=rh.presample_batch,
        on_restart=on_restart,
        version=version,
    )
    perfect, explore = split_by_correctness(correct)
    explore = explore + list(range(n, len(train)))  # prompts not pre-sampled are for exploration
    result = RehearsalSet(
        perfect=perfect,
        explore=explore,
        responses=stored,
        presampled=n,
        presample_s=round(time.time() - t, 3),
        key=key,
        counts=[sum(c) for c in correct],
    )
    atomic_write_json(path, result.to_json(), indent=None)
    console.print(
        f"rehearsal: pre-sampled in {result.presample_s:.1f}s: D_pef {len(perfect)} prompts solved "
        f"{rh.k}/{rh.k} ({len(stored)} responses), D_exp {len(explore)} prompts -> {path}"
    )
    console.print(f"rehearsal: prompts by correct samples: {result.histogram(rh.k)}")
    if not stored:
        console.print(
            "[yellow]rehearsal: the initial policy solved no prompt k/k: the rehearsal set is empty and "
            "the samples: reference regularizers have nothing to act on (a smaller rehearsal.k, or a "
            "stronger initial policy, gives them a set)[/]"
        )
    return result
