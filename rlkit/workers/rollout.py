"""RolloutWorker: a Ray actor that owns a rollout engine and receives policy weights after every step."""

from __future__ import annotations

import os

from typing import TYPE_CHECKING

from rlkit.rollout import SamplingParams

from .common import load_model, restarted_by_ray, setup_process
from .local import remote_actor

if TYPE_CHECKING:
    from rlkit.rollout.base import RolloutEngine


@remote_actor
class RolloutWorker:
    engine: RolloutEngine

    def __init__(
        self,
        model_path: str,
        rank: int = 0,
        engine: str = "transformers",
        dtype: str = "float32",
        batch_size: int = 256,
        torch_threads: int = 1,
        seed: int = 0,
        version: int = 0,
        vllm_options: dict | None = None,
        model=None,
        tokenizer=None,
        sampler: str = "native",
        attn_implementation: str | None = None,
    ):
        """``model``/``tokenizer`` (in-process placement only): generate with this live ``nn.Module``, the learner's
        policy, instead of loading a copy; weight updates are then no-ops (the weights are shared)."""
        setup_process(torch_threads, seed + rank)
        self.rank, self.version = rank, version  # the weights at model_path are this version (Ray restarts reuse it)
        self.shared = model is not None
        if self.shared:
            if engine != "transformers":
                raise ValueError(f"rollout.engine {engine!r} cannot share the learner's module: use 'transformers'")
            from rlkit.rollout import TransformersEngine

            self.tokenizer = tokenizer
            self.engine = TransformersEngine(model, tokenizer, batch_size, sampler)
        elif engine == "vllm":
            import tempfile

            from rlkit.models.loading import TINY_NAMES, load_tokenizer
            from rlkit.rollout.vllm import VLLMEngine

            if model_path in TINY_NAMES:  # vLLM loads from a directory: write the built-in model out first
                from rlkit.models.tiny import save_tiny

                model_path = str(save_tiny(tempfile.mkdtemp(prefix="rlkit_tiny_")))
            self.tokenizer = load_tokenizer(model_path)
            self.engine = VLLMEngine(model_path, self.tokenizer, dtype=dtype, seed=seed + rank, **(vllm_options or {}))
        elif engine == "transformers":
            from rlkit.rollout import TransformersEngine

            model, self.tokenizer = load_model(model_path, dtype, attn_implementation)  # vLLM picks its own kernels
            self.engine = TransformersEngine(model, self.tokenizer, batch_size, sampler)
        else:
            raise ValueError(f"rollout.engine {engine!r}: choose 'transformers' or 'vllm'")
        print(
            f"RolloutWorker[{rank}] pid={os.getpid()} engine={engine} model="
            f"{'the learner policy (shared, in-process)' if self.shared else model_path}",
            flush=True,
        )
        if restarted_by_ray():
            print(
                f"RolloutWorker[{rank}] was restarted by Ray: it holds weights version {version} until the driver "
                "re-sends the current ones",
                flush=True,
            )

    def generate(self, prompt_ids: list[list[int]], params: dict, expect_version: int | None = None):
        """Completions as dicts; ``{"stale": version}`` instead when the worker's weights are not
        ``expect_version`` (it was restarted by Ray since the last sync): the driver re-sends weights and retries."""
        if expect_version is not None and expect_version != self.version:
            return {"stale": self.version}
        outs = self.engine.generate(prompt_ids, SamplingParams(**params))
        return [dict(vars(c)) for c in outs]  # shallow: asdict deep-copies every token list (a few % of a tiny step)

    def update_weights(self, state_dict: dict | None, version: int) -> int:
        if not self.shared:
            assert state_dict is not None  # None is only sent to a shared engine (SharedModuleSync)
            self.engine.update_weights(state_dict)
        self.version = version
        return version

    def weights_version(self) -> int:
        return self.version


def spawn_rollout_workers(
    recipe, model_path: str, version: int = 0, max_restarts: int = 0, share=None, inprocess: bool = False
) -> list:
    """``rollout.num_workers`` rollout actors for a recipe (engine, ``rollout.dtype`` or else ``model.dtype``, CPU/GPU
    shares from ``recipe.ray``).
    ``inprocess``: one worker in this process (``ray.mode: inprocess``), generating with ``share=(model,
    tokenizer)``, a live module, when given, else with its own copy of the model at ``model_path``."""
    rc, ro = recipe.ray, recipe.rollout
    if inprocess:
        from .local import spawn

        model, tokenizer = share if share is not None else (None, None)
        return [
            spawn(
                RolloutWorker,
                {},
                model_path,
                engine=ro.engine,
                dtype=ro.dtype or recipe.model.dtype,
                batch_size=ro.batch_size,
                torch_threads=rc.torch_threads,
                seed=recipe.seed,
                version=version,
                model=model,
                tokenizer=tokenizer,
                sampler=ro.sampler,
                attn_implementation=recipe.model.attn_implementation,
                inprocess=True,
            )
        ]
    opts = dict(num_cpus=rc.cpus_per_rollout_worker, max_restarts=max_restarts)
    if rc.gpus_per_rollout_worker:
        opts["num_gpus"] = rc.gpus_per_rollout_worker
    # @remote_actor made the class a lazy Ray actor class; mypy ignores what a class decorator returns
    return [
        RolloutWorker.options(**opts).remote(  # type: ignore[attr-defined]
            model_path,
            rank=i,
            engine=ro.engine,
            dtype=ro.dtype or recipe.model.dtype,
            batch_size=ro.batch_size,
            torch_threads=rc.torch_threads,
            seed=recipe.seed,
            version=version,
            sampler=ro.sampler,
            attn_implementation=recipe.model.attn_implementation,
            vllm_options=ro.vllm.model_dump() if ro.engine == "vllm" else None,
        )
        for i in range(ro.num_workers)
    ]
