"""``ray.mode: inprocess``: every worker role in the driver process, the rollout engine sharing the learner's
module. It must train exactly as the Ray actor placement does, and refuse what it cannot do."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlkit._config import ConfigError
from rlkit.config import load_recipe
from rlkit.workers.local import LocalActor, LocalRef, actor_class, get, spawn

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "sft.enabled=false",
    "grpo.steps=3",
    "grpo.prompts_per_step=4",
    "grpo.group_size=4",
    "eval.before=false",
    "eval.num_prompts=4",
    "eval.n_samples=2",
    "eval.ks=[1,2]",
    "logging.plot=false",
    "logging.tensorboard=false",
    "data.params={n_train: 64, n_eval: 8}",
    "ray.torch_threads=1",
    # a dense signal (shorter is better) so that the untrained policy moves within 3 steps
    "rewards=[{name: numeric_match}, {name: length_penalty, weight: 0.5, params: {max_length: 2, scale: 8}}]",
]


class Counter:
    def __init__(self, start):
        self.n = start

    def add(self, k=1):
        self.n += k
        return self.n

    def fail(self):
        raise KeyError("boom")


def test_local_actor_calls_like_a_ray_handle():
    actor = spawn(Counter, {"num_cpus": 1}, 5, inprocess=True)
    assert isinstance(actor, LocalActor) and actor.instance.n == 5
    ref = actor.add.remote(k=2)
    assert isinstance(ref, LocalRef) and get(ref) == 7
    assert get([actor.add.remote(), actor.add.remote()]) == [8, 9]
    assert actor.n == 9  # plain attributes read through
    bad = actor.fail.remote()  # the exception is kept in the future, raised by get, as with Ray
    with pytest.raises(KeyError, match="boom"):
        get(bad)


@pytest.mark.ray
def test_spawn_unwraps_ray_remote_classes_without_starting_ray():
    import ray

    from rlkit.workers import RewardWorker

    assert actor_class(RewardWorker).__name__ == "RewardWorker" and actor_class(Counter) is Counter
    worker = spawn(RewardWorker, {"num_cpus": 0.25}, [{"name": "numeric_match"}], inprocess=True)
    scored = get(worker.score.remote(["1+1="], ["2", "3"][:1], ["2"]))
    assert scored["totals"] == [1.0]
    assert not ray.is_initialized()


def test_shared_rollout_engine_uses_the_learner_module_and_keeps_its_mode():
    from rlkit.models.tiny import build_tiny_model, build_tiny_tokenizer
    from rlkit.rollout import SamplingParams
    from rlkit.workers import RolloutWorker

    model, tok = build_tiny_model(), build_tiny_tokenizer(padding_side="left")
    model.train()
    worker = spawn(RolloutWorker, {}, "tiny", model=model, tokenizer=tok, inprocess=True)
    assert worker.instance.engine.model is model
    params = dict(n=2, max_new_tokens=4, temperature=1.0, seed=3)
    first = get(worker.generate.remote([[1, 2, 3]], params))
    assert model.training  # eval() only for the call
    with torch.no_grad():  # a change to the learner's weights is seen at once: no sync needed
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert get(worker.update_weights.remote(None, 1)) == 1  # a no-op that records the version
    second = get(worker.generate.remote([[1, 2, 3]], params))
    assert [c["logprobs"] for c in first] != [c["logprobs"] for c in second]
    with pytest.raises(ValueError, match="share"):
        actor_class(RolloutWorker)("tiny", engine="vllm", model=model, tokenizer=tok)
    assert SamplingParams(**params).n == 2


def test_inprocess_run_never_imports_ray(tmp_path):
    """Worker modules create their Ray actor classes lazily: an in-process job loads no Ray at all (its import alone
    is ~30 MB of resident memory)."""
    code = (
        "import sys\n"
        "from rlkit.config import load_recipe\n"
        "from rlkit.trainer.grpo import run_grpo\n"
        f"r = load_recipe('recipes/quickstart.yaml', ['output_dir={tmp_path}', 'ray.mode=inprocess', 'grpo.steps=1', "
        "'grpo.prompts_per_step=2', 'grpo.group_size=2', 'eval.before=false', 'eval.num_prompts=1', "
        "'eval.n_samples=1', 'eval.ks=[1]', 'sft.enabled=false', 'logging.tensorboard=false', 'logging.plot=false', "
        "'checkpoint.save_final=false', 'data.params={n_train: 8, n_eval: 2}'])\n"
        "run_grpo(r)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('no ray')\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "no ray" in out.stdout and (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "override,key",
    [
        ("rollout.engine=vllm", "rollout.engine"),
        ("rollout.num_workers=2", "rollout.num_workers"),
        ("learner.num_workers=2", "learner.num_workers"),
        ("ray.address=auto", "ray.address"),
    ],
)
def test_inprocess_refuses_what_it_cannot_run(override, key):
    with pytest.raises(ConfigError) as err:
        load_recipe(ROOT / "recipes" / "quickstart.yaml", ["ray.mode=inprocess", override])
    assert key in str(err.value) and "ray.mode" in str(err.value)
    load_recipe(ROOT / "recipes" / "quickstart.yaml", ["ray.mode=actors", override.replace("vllm", "transformers")])


@pytest.mark.parametrize(
    "overrides,placement",
    [
        ([], "inprocess"),
        (["algorithm=ppo", "grpo={}"], "inprocess"),  # grpo={}: the quickstart's grpo: keys, which PPO would not read
        (["rollout.engine=vllm"], "actors"),
        (["rollout.num_workers=2"], "actors"),
        (["learner.num_workers=2"], "actors"),
        (["ray.address=auto"], "actors"),
        (["ray.mode=actors"], "actors"),
    ],
)
def test_auto_placement_is_inprocess_exactly_when_the_job_fits_one_process(overrides, placement):
    """``ray.mode: auto`` (the default, and the quickstart's) is resolved once, when the recipe is built."""
    from rlkit.config import RayConfig

    assert RayConfig().mode == "auto"
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides)
    assert recipe.ray.mode == placement
    # the run's header says why (only when auto chose): the fit, or the first setting that needs actors
    why = recipe.ray._chosen_by
    if "ray.mode=actors" in overrides:
        assert why is None
    elif placement == "inprocess":
        assert why == "ray.mode auto: the job fits one process"
    else:
        assert why.startswith("ray.mode auto: " + overrides[0].split("=")[0]) and why.endswith("needs Ray actors")


def rlkit(*args, home):
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "rlkit", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("async_rollout", [False, True])
@pytest.mark.ray
def test_inprocess_trains_exactly_like_ray_actors_and_resumes(tmp_path, async_rollout):
    """Synchronous: the engine shares the learner's module. Async: the engine has its own copy and generates the next
    batch in a thread while the learner trains; in both placements that batch comes from the previous weights."""
    runs = {}
    for mode in ("inprocess", "actors"):
        out = tmp_path / mode
        args = [
            "train",
            "recipes/quickstart.yaml",
            f"output_dir={out}",
            *FAST,
            f"ray.mode={mode}",
            "checkpoint.save_every=2",
            f"grpo.async_rollout={str(async_rollout).lower()}",
        ]
        proc = rlkit(*args, home=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[mode] = (metrics(out), proc.stdout, args)
    (rows, stdout, args), (ray_rows, ray_stdout, _) = runs["inprocess"], runs["actors"]
    assert "in-process mode" in stdout and "Ray: started" not in stdout and "Ray: started" in ray_stdout
    assert ("shared, in-process" in stdout) != async_rollout
    # same seeds, one torch thread each: the same samples, losses and weights, step after step
    assert [r["step"] for r in rows] == [1, 2, 3]
    for a, b in zip(rows, ray_rows):
        diff = {k: (a[k], b[k]) for k in a if not k.startswith("time") and a[k] != b.get(k)}
        assert not diff, diff
    assert rows[-1]["kl_k3/value"] > 0  # the policy moved (and the rollout saw it: same rewards as with sync)
    # resume in-process from the step-2 checkpoint: step 3 is redone (identically when synchronous; with async
    # rollouts its batch is generated again, now from the step-2 weights)
    out = tmp_path / "inprocess"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002"]  # save_every=2 of 3 steps
    proc = rlkit(*runs["inprocess"][2], "--resume", home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "step_000002" in proc.stdout
    again = metrics(out)
    assert [r["step"] for r in again] == [1, 2, 3]
    assert again[:2] == rows[:2]
    if not async_rollout:
        assert again[-1]["loss/total"] == rows[-1]["loss/total"] and again[-1]["grad_norm"] == rows[-1]["grad_norm"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe,extra",
    [
        ("recipes/ppo_kl_adaptive.yaml", ["ppo.steps=2", "ppo.prompts_per_step=8"]),
        ("recipes/grpo_lora.yaml", ["grpo.steps=2"]),
    ],
)
def test_inprocess_runs_ppo_and_lora(tmp_path, recipe, extra):
    args = [
        "train",
        recipe,
        f"output_dir={tmp_path}",
        *[a for a in FAST if not a.startswith("grpo.")],
        *extra,
        "ray.mode=inprocess",
    ]
    proc = rlkit(*args, home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss/total"] == r["loss/total"] for r in rows)
    assert (tmp_path / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("async_rollout", [False, True])
def test_inprocess_reference_refresh_reaches_the_reference(tmp_path, async_rollout):
    """TR-DPO refresh in-process: the learner's weights go to the reference worker when it is due (here after every
    step with rate 1), so at the next step the refreshed reference equals the policy: KL 0, while the KL to the
    initial model is not. With async rollouts the next batch is generated and scored by the fixed reference while
    the learner trains, but the refreshing reference must score it after the refresh."""
    regs = "regularizers=[kl_k3, {name: kl, estimator: k3, label: tr, reference: {type: initial, refresh_every: 1}}]"
    args = [
        "train",
        "recipes/quickstart.yaml",
        f"output_dir={tmp_path}",
        *FAST,
        "grpo.steps=2",
        "ray.mode=inprocess",
        regs,
        f"grpo.async_rollout={str(async_rollout).lower()}",
    ]
    proc = rlkit(*args, home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(tmp_path)
    assert rows[1]["kl_k3/value"] > 1e-4
    assert abs(rows[1]["tr/value"]) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inprocess", pytest.param("actors", marks=pytest.mark.ray)])
def test_resume_continues_from_the_refreshed_reference(tmp_path, mode):
    """TR-DPO (soft refresh after step 2) with a checkpoint at step 2: the checkpoint stores the refreshed
    reference, and the run resumed from it redoes step 3 exactly, the KL to the refreshed reference included.
    Without the stored weights the resumed reference is the initial model again and step 3's ``tr/value`` moves."""
    regs = (
        "regularizers=[kl_k3, {name: kl, estimator: k3, label: tr, "
        "reference: {type: initial, refresh_every: 2, refresh_rate: 0.5}}]"
    )
    args = ["train", "recipes/quickstart.yaml", f"output_dir={tmp_path}", *FAST]
    args += [f"ray.mode={mode}", "checkpoint.save_every=2", regs]
    proc = rlkit(*args, home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(tmp_path)
    ck = tmp_path / "checkpoints" / "step_000002"
    assert (ck / "references" / "initial-refresh2-0.5.safetensors").is_file()
    assert rows[2]["tr/value"] != rows[2]["kl_k3/value"]  # the refreshed reference is not the initial model
    proc = rlkit(*args, "--resume", home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "warning" not in proc.stdout
    again = metrics(tmp_path)
    assert [r["step"] for r in again] == [1, 2, 3]
    for key in ("tr/value", "kl_k3/value", "loss/total", "grad_norm"):
        assert again[2][key] == rows[2][key], key


@pytest.mark.slow
def test_async_prefetch_scores_fixed_references_early_and_refreshing_ones_after_the_refresh(tmp_path, monkeypatch):
    """With async rollouts the next batch is scored by the references that never change in the rollout thread,
    while the learner trains; a TR-DPO reference scores each batch in the driver thread, after the refresh that
    precedes the step (the refresh count at scoring time equals the step). Independent of timing: the thread and
    the refresh count are recorded by the reference worker itself."""
    import threading

    import torch

    from rlkit.trainer.grpo import run_grpo
    from rlkit.workers.local import actor_class
    from rlkit.workers.reference import ReferenceWorker

    ReferenceWorker = actor_class(ReferenceWorker)  # the plain class, instantiated in-process
    calls, refreshes = [], {}
    compute, refresh = ReferenceWorker.compute, ReferenceWorker.refresh

    def recording_compute(self, *args, **kwargs):
        calls.append((self.name, refreshes.get(self.name, 0), threading.current_thread().name))
        return compute(self, *args, **kwargs)

    def counting_refresh(self, *args, **kwargs):
        refreshes[self.name] = refreshes.get(self.name, 0) + 1
        return refresh(self, *args, **kwargs)

    monkeypatch.setattr(ReferenceWorker, "compute", recording_compute)
    monkeypatch.setattr(ReferenceWorker, "refresh", counting_refresh)
    from rlkit.workers.reward import RewardWorker

    RewardWorker = actor_class(RewardWorker)
    rewarded, score = [], RewardWorker.score

    def counting_score(self, prompts, *args, **kwargs):
        rewarded.append((len(prompts), threading.current_thread().name))
        return score(self, prompts, *args, **kwargs)

    monkeypatch.setattr(RewardWorker, "score", counting_score)
    regs = "regularizers=[kl_k3, {name: kl, estimator: k3, label: tr, reference: {type: initial, refresh_every: 1}}]"
    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            f"output_dir={tmp_path}",
            *FAST,
            "grpo.steps=4",
            "ray.mode=inprocess",
            "grpo.async_rollout=true",
            "eval.kl_to_initial=false",
            "checkpoint.save_final=false",
            regs,
        ],
    )
    threads = torch.get_num_threads()
    try:
        run_grpo(recipe)
    finally:
        torch.set_num_threads(threads)
    names = sorted({name for name, _, _ in calls})
    assert len(names) == 2, calls
    fixed = [c for c in calls if c[1] == 0 and c[0] not in refreshes]
    tr = [c for c in calls if c[0] in refreshes]
    # steps 2-4 prefetched; then the evaluation's KL to the initial model, in the driver
    assert [t for _, _, t in fixed] == ["MainThread"] + ["rollout_0"] * 3 + ["MainThread"], calls
    assert [(n, t) for _, n, t in tr] == [(s, "MainThread") for s in range(4)], calls
    # each training batch (4 prompts x 4) is rewarded exactly once: step 1 in the driver, steps 2-4 prefetched
    train = [r for r in rewarded if r[0] == 16]
    assert train == [(16, "MainThread")] + [(16, "rollout_0")] * 3, rewarded
