"""Pure divergence math: f-divergence generators, sampled estimators, exact full-vocabulary divergences."""

from .exact import f_divergence
from .linear import linear_f_divergence
from .proxy import FILTERED_LOGPROB, lp_reg_proxy_logprobs
from .generators import DIVERGENCES, DPO_DIVERGENCES, canonical, dpo_score, f_of_logu, fprime_at_one
from .sampled import KL_ESTIMATORS, f_divergence_sampled, kl_penalty

__all__ = [
    "DIVERGENCES",
    "FILTERED_LOGPROB",
    "DPO_DIVERGENCES",
    "KL_ESTIMATORS",
    "canonical",
    "dpo_score",
    "f_divergence",
    "f_divergence_sampled",
    "f_of_logu",
    "fprime_at_one",
    "kl_penalty",
    "linear_f_divergence",
    "lp_reg_proxy_logprobs",
]
