"""rlkit: RLHF/RLVR post-training with GRPO, PPO and DPO and a pluggable regularizer layer.

Importing ``rlkit`` is cheap: it pulls in neither Ray, vLLM nor TRL. The pure-tensor math lives in
:mod:`rlkit.functional`; the regularizer registry in :mod:`rlkit.regularizers`; losses in
:mod:`rlkit.objectives`.
"""

__version__ = "0.1.0"
