"""RolloutWorker: a Ray actor that owns a rollout engine and receives policy weights after every step."""

from __future__ import annotations

import os
from dataclasses import asdict

import ray

from rlkit.rollout import SamplingParams

from .common import load_model, setup_process


@ray.remote
class RolloutWorker:
    def __init__(self, model_path: str, rank: int = 0, engine: str = "transformers", dtype: str = "float32",
                 batch_size: int = 256, torch_threads: int = 1, seed: int = 0, version: int = 0):
        setup_process(torch_threads, seed + rank)
        self.rank, self.version = rank, version  # the weights at model_path are this version (Ray restarts reuse it)
        model, tokenizer = load_model(model_path, dtype)
        self.tokenizer = tokenizer
        if engine != "transformers":
            raise ValueError(f"rollout.engine {engine!r} is not available yet; use 'transformers'")
        from rlkit.rollout import TransformersEngine

        self.engine = TransformersEngine(model, tokenizer, batch_size)
        print(f"RolloutWorker[{rank}] pid={os.getpid()} engine={engine} model={model_path}", flush=True)

    def generate(self, prompt_ids: list[list[int]], params: dict, expect_version: int | None = None):
        """Completions as dicts; ``{"stale": version}`` instead when the worker's weights are not
        ``expect_version`` (it was restarted by Ray since the last sync): the driver re-sends weights and retries."""
        if expect_version is not None and expect_version != self.version:
            return {"stale": self.version}
        outs = self.engine.generate(prompt_ids, SamplingParams(**params))
        return [asdict(c) for c in outs]

    def update_weights(self, state_dict: dict, version: int) -> int:
        self.engine.update_weights(state_dict)
        self.version = version
        return version

    def weights_version(self) -> int:
        return self.version
