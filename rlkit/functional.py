"""``rlkit.functional``: the pure-tensor math of rlkit as a public API.

Usable from any trainer (TRL's included): no Ray, vLLM or TRL is imported. Conventions: ``pi`` is the policy,
``pi_ref`` the reference; "reverse KL" is ``KL(pi || pi_ref)`` (mode-seeking), "forward KL" is ``KL(pi_ref || pi)``
(mass-covering); ``js`` is the standard Jensen-Shannon divergence (<= log 2); ``alpha`` is the f-DPO paper's
alpha-divergence (alpha -> 0 reverse KL, alpha = 1 forward KL).
"""

from rlkit.advantages import gae_advantages, group_advantages, rloo_advantages, whiten
from rlkit.divergences import f_divergence, f_divergence_sampled, kl_penalty, linear_f_divergence
from rlkit.divergences.generators import dpo_score, f_of_logu
from rlkit.divergences.gradients import exact_sequence_penalty, sampled_penalty
from rlkit.divergences.proxy import lp_reg_proxy_logprobs
from rlkit.models.fused_head import linear_token_logprobs
from rlkit.objectives.aggregation import aggregate
from rlkit.objectives.dpo import dpo_loss, fdpo_loss, preference_ece
from rlkit.objectives.policy import clipped_surrogate, tis_weights
from rlkit.objectives.ppo import token_level_rewards, value_loss
from rlkit.references.soup import soup_state_dict
from rlkit.weights import AdaptiveKLController, dads_weights, paced_weights, scheduled_coef

__all__ = [
    "AdaptiveKLController",
    "aggregate",
    "clipped_surrogate",
    "dads_weights",
    "dpo_loss",
    "dpo_score",
    "exact_sequence_penalty",
    "f_divergence",
    "f_divergence_sampled",
    "f_of_logu",
    "fdpo_loss",
    "preference_ece",
    "gae_advantages",
    "group_advantages",
    "kl_penalty",
    "linear_f_divergence",
    "linear_token_logprobs",
    "lp_reg_proxy_logprobs",
    "paced_weights",
    "rloo_advantages",
    "sampled_penalty",
    "scheduled_coef",
    "soup_state_dict",
    "tis_weights",
    "token_level_rewards",
    "value_loss",
    "whiten",
]
