"""``code_tests``: run the completion's Python code against test cases in the sandbox (:mod:`.sandbox`).

Test cases come from the sample's reference answer (the ``answers`` column), in one of two forms:

* **stdin/stdout pairs**: a JSON list ``[{"input": "1 2\\n", "output": "3\\n"}, ...]`` (or a JSON object
  ``{"inputs": [...], "outputs": [...]}``). The program reads ``input`` on stdin; the test passes when it exits
  cleanly and its stdout equals ``output`` up to trailing whitespace on each line and trailing blank lines.
  A list-valued ``input``/``output`` is joined with newlines.
* **assert statements**: any other string is Python source appended after the code. Every top-level ``assert`` is
  one test case, run together with the non-assert statements (setup, helpers) that precede it; the test passes when
  the program exits with status 0. Source that does not parse is one test case as a whole.

Every test case is a separate sandboxed process, so one hanging or crashing test cannot affect another and the
reward never raises for anything the generated code does. Code that does not compile fails all its tests without
starting a process; with ``mode="all"`` the remaining tests of a sample are skipped after the first failure.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .base import SampleReward, check_batch
from .extract import DEFAULT_EOS_MARKERS, strip_eos
from .registry import register_reward
from .sandbox import ISOLATION_LEVELS, SandboxResult, require_isolation, run_sandboxed

FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_code(text: str, eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS) -> str:
    """The last ```` ```python ```` fenced block (also ``py``/``python3``); else the last untagged fenced block;
    else the whole text (EOS markers stripped). An unterminated final fence counts up to the end of the text."""
    text = strip_eos(text, eos_markers)
    blocks = FENCE.findall(text if text.count("```") % 2 == 0 else text + "\n```")
    for wanted in (lambda tag: tag.lower() in PYTHON_TAGS, lambda tag: tag == ""):
        chosen = [body for tag, body in blocks if wanted(tag)]
        if chosen:
            return chosen[-1]
    return text


@dataclass(frozen=True)
class CodeTest:
    """Either a stdin/stdout pair (``expected`` set) or a program suffix of assert statements (``suffix``)."""

    stdin: str = ""
    expected: str | None = None
    suffix: str = ""


@dataclass(frozen=True)
class CodeTestOutcome:
    """``passed`` plus the sandbox status (``ok``, ``error``, ``timeout``, ``memory``, ``refused``) or ``wrong``
    (ran cleanly, wrong output), ``syntax`` (code does not compile) or ``skipped`` (``mode="all"`` after a failure)."""

    passed: bool
    status: str


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value) + "\n"
    return value if isinstance(value, str) else json.dumps(value)


def _normalize(out: str) -> str:
    return "\n".join(line.rstrip() for line in out.replace("\r\n", "\n").rstrip().split("\n"))


def parse_tests(answer: str | None) -> list[CodeTest]:
    """Test cases from a reference answer (see the module docstring); ``[]`` for ``None`` or blank."""
    if answer is None or not str(answer).strip():
        return []
    answer = str(answer)
    if answer.lstrip()[:1] in "[{":
        try:
            data = json.loads(answer)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("inputs"), list) and isinstance(data.get("outputs"), list):
            data = [{"input": i, "output": o} for i, o in zip(data["inputs"], data["outputs"])]
        if isinstance(data, list) and all(isinstance(t, dict) and "output" in t for t in data):
            return [CodeTest(stdin=_text(t.get("input", "")), expected=_text(t["output"])) for t in data]
    try:
        tree = ast.parse(answer)
    except (SyntaxError, ValueError):
        return [CodeTest(suffix=answer)]
    setup: list[str] = []
    tests: list[CodeTest] = []
    for node in tree.body:
        segment = ast.get_source_segment(answer, node) or ""
        if isinstance(node, ast.Assert):
            tests.append(CodeTest(suffix="\n".join([*setup, segment])))
        else:
            setup.append(segment)
    return tests or [CodeTest(suffix=answer)]


@register_reward("code_tests")
class CodeExecReward(SampleReward):
    """Fraction of the reference's test cases that the completion's code passes (``mode="all"``: 1.0 only if all
    pass, else 0.0). No test cases (``None``/blank reference) scores 0.0.

    Params: ``timeout_s`` (wall clock per test case), ``cpu_time_s``, ``memory_mb`` (sandbox limits),
    ``mode`` (``fraction`` | ``all``), ``max_workers`` (test cases run concurrently per sample; each is its own
    process, so > 1 only helps with spare cores), ``eos_markers`` and ``isolation``: ``best_effort`` (default: the
    strongest sandbox the host allows, see :mod:`.sandbox`) or ``strict`` (refuse to score -- a
    :class:`~reward_models.sandbox.SandboxUnavailableError` when the reward is built -- unless the host provides
    the namespaces and the seccomp filter). :meth:`run_tests` returns the per-test outcomes of one sample and
    :meth:`details` the per-test pass/fail lists of a batch.
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        memory_mb: int = 256,
        cpu_time_s: int = 5,
        mode: str = "fraction",
        max_workers: int = 1,
        eos_markers: Sequence[str] = DEFAULT_EOS_MARKERS,
        isolation: str = "best_effort",
    ):
        if mode not in ("fraction", "all"):
            raise ValueError(f"mode must be 'fraction' or 'all', got {mode!r}")
        if not (timeout_s > 0 and memory_mb > 0 and cpu_time_s > 0):
            raise ValueError("timeout_s, memory_mb and cpu_time_s must be > 0")
        if not (isinstance(max_workers, int) and max_workers >= 1):
            raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        self.timeout_s, self.memory_mb, self.cpu_time_s = float(timeout_s), int(memory_mb), cpu_time_s
        self.mode, self.max_workers, self.eos_markers = mode, max_workers, tuple(eos_markers)
        if isolation not in ISOLATION_LEVELS:
            raise ValueError(f"isolation must be one of {ISOLATION_LEVELS}, got {isolation!r}")
        if isolation == "strict":
            require_isolation(isolation, owner="code_tests")  # fail when the reward is built, not mid-training
        self.isolation = isolation

    def _run_one(self, code: str, test: CodeTest) -> CodeTestOutcome:
        program = code if test.expected is not None else f"{code}\n\n{test.suffix}\n"
        result: SandboxResult = run_sandboxed(
            program,
            stdin=test.stdin,
            timeout_s=self.timeout_s,
            cpu_time_s=self.cpu_time_s,
            memory_mb=self.memory_mb,
            isolation=self.isolation,
        )
        if not result.ok:
            return CodeTestOutcome(False, result.status)
        if test.expected is not None and _normalize(result.stdout) != _normalize(test.expected):
            return CodeTestOutcome(False, "wrong")
        return CodeTestOutcome(True, "ok")

    def run_tests(self, completion: str, answer: str | None) -> list[CodeTestOutcome]:
        """One :class:`CodeTestOutcome` per test case of ``answer`` for the code extracted from ``completion``."""
        tests = parse_tests(answer)
        code = extract_code(completion, self.eos_markers)
        try:
            with warnings.catch_warnings():  # compiled only to fail fast on a syntax error; never executed here
                warnings.simplefilter("ignore")
                compile(code, "<solution>", "exec")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return [CodeTestOutcome(False, "syntax") for _ in tests]
        if self.max_workers > 1 and self.mode == "fraction":
            with ThreadPoolExecutor(self.max_workers) as pool:
                return list(pool.map(lambda t: self._run_one(code, t), tests))
        outcomes: list[CodeTestOutcome] = []
        for test in tests:
            if self.mode == "all" and outcomes and not outcomes[-1].passed:
                outcomes.append(CodeTestOutcome(False, "skipped"))
                continue
            outcomes.append(self._run_one(code, test))
        return outcomes

    def details(
        self, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str | None] | None = None
    ) -> list[list[bool]]:
        """Per sample, the pass/fail of each of its test cases (in the reference's order)."""
        refs = check_batch(prompts, completions, answers, owner=self.name)
        return [[o.passed for o in self.run_tests(c, a)] for c, a in zip(completions, refs)]

    def score(self, prompt: str, completion: str, answer: str | None) -> float:
        outcomes = self.run_tests(completion, answer)
        if not outcomes:
            return 0.0
        passed = sum(o.passed for o in outcomes)
        if self.mode == "all":
            return 1.0 if passed == len(outcomes) else 0.0
        return passed / len(outcomes)
