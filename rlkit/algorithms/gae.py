"""PPO's critic-based estimator: token-level GAE on the PPO-RLHF reward (math: :func:`rlkit.advantages.gae_advantages`,
:func:`rlkit.objectives.ppo.token_level_rewards`)."""

from __future__ import annotations

from rlkit.advantages import gae_advantages, whiten
from rlkit.objectives.aggregation import masked_mean
from rlkit.objectives.ppo import token_level_rewards

from .base import AdvantageEstimator, AdvantageInputs, AdvantageOutput
from .registry import ADVANTAGES


@ADVANTAGES.register("gae")
class GAEAdvantage(AdvantageEstimator):
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv 1506.02438) on ``r_t = 1[t = last] score -
    sum_r coef_r D_r(t)``: ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)``, ``A_t = sum_l (gamma lam)^l
    delta_{t+l}``, whitened over the batch's tokens when ``cfg.whiten_advantages``; returns ``R_t = A_t + V(s_t)``
    (before whitening) are the value targets. ``cfg``: ``gamma``, ``lam``, ``whiten_advantages``."""

    needs_values = True

    def __call__(self, inputs: AdvantageInputs) -> AdvantageOutput:
        if inputs.values is None:
            raise ValueError("advantage 'gae' needs the critic's values (algorithm: ppo)")
        mask, values = inputs.mask, inputs.values
        rewards = token_level_rewards(inputs.scores, mask, inputs.penalty)
        adv, returns = gae_advantages(rewards, values, mask, self.cfg.gamma, self.cfg.lam)
        metrics = {
            "advantage/abs_mean": float(masked_mean(adv.abs(), mask)),
            "value/returns_mean": float(masked_mean(returns, mask)),
            "value/old_mean": float(masked_mean(values, mask)),
        }
        return AdvantageOutput(whiten(adv, mask) if self.cfg.whiten_advantages else adv, returns, metrics)
