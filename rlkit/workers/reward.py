"""RewardWorker: scores completions with the recipe's reward functions (``reward_models``)."""

from __future__ import annotations

import os

from .local import remote_actor


@remote_actor
class RewardWorker:
    def __init__(self, specs: list[dict]):
        from reward_models import CompositeReward

        self.reward = CompositeReward(specs)
        print(f"RewardWorker pid={os.getpid()} rewards={[s['name'] for s in specs]}", flush=True)

    def score(self, prompts: list[str], completions: list[str], answers: list[str | None]) -> dict:
        result = self.reward.compute(prompts, completions, answers)
        return {"totals": result.totals, "components": result.components, "failures": result.failures}
