"""RewardWorker: scores completions with the recipe's reward functions (``reward_models``)."""

from __future__ import annotations

import os

from .common import restarted_by_ray
from .local import remote_actor


@remote_actor
class RewardWorker:
    def __init__(self, specs: list[dict]):
        from reward_models import CompositeReward

        self.reward = CompositeReward(specs)
        print(f"RewardWorker pid={os.getpid()} rewards={[s['name'] for s in specs]}", flush=True)
        self.restarts = int(restarted_by_ray())  # reported with the next scores, then reset
        if self.restarts:
            print(
                f"RewardWorker was restarted by Ray (pid {os.getpid()}): its previous process died; the batch it "
                "was scoring is scored again",
                flush=True,
            )

    def score(self, prompts: list[str], completions: list[str], answers: list[str | None]) -> dict:
        result = self.reward.compute(prompts, completions, answers)
        restarts, self.restarts = self.restarts, 0
        return {
            "totals": result.totals,
            "components": result.components,
            "failures": result.failures,
            "restarts": restarts,
        }
