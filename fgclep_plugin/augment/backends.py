"""Candidate generators: the vLLM offline engine, an OpenAI-compatible server, transformers, the knowledge base.

Every backend answers a batch of normalised reports with raw answer texts (``complete``), ``None`` for a
request whose retries failed too (a structured-output grammar abort, vLLM issue 18783, or a server error:
counted in ``failures``, retried once, or with backoff by the OpenAI backend, never raised).
:meth:`Backend.propose` parses them into feature lists. Heavy libraries (vllm, transformers, httpx2) are
imported only when their backend is built.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .openai_http import JsonClient, RequestFailed, backoff
from .text import MAX_FEATURE_CHARS, MAX_FEATURES, answer_schema, build_messages, parse_answer

BACKENDS = ("kb", "vllm", "openai", "transformers")
RETRY_WARNINGS = 20  # openai: retries named one by one; later ones are silent
SERVER_DOWN = 8  # openai: after this many reports in a row lost to transient errors, no more waits


class Backend:
    """Base class: ``complete`` (raw texts, None = failed) and ``propose`` (parsed features)."""

    name = "?"

    def __init__(
        self, model: str, max_features: int = MAX_FEATURES, max_chars: int = MAX_FEATURE_CHARS
    ) -> None:
        self.model = model
        self.max_features, self.max_chars = max_features, max_chars
        self.schema = answer_schema(max_features, max_chars)
        self.failures = 0  # first attempts that failed (each retried)
        self.failed = 0  # reports whose retries failed too
        self.errors: dict[str, str] = {}  # report -> why its last request failed (where the backend knows)

    def _attempt(self, reports: Sequence[str]) -> list[str | None]:
        """One try at every report: its answer text, or None if its request failed."""
        raise NotImplementedError

    def complete(self, reports: Sequence[str]) -> list[str | None]:
        """Answer texts of ``reports``; a failed request is retried once, then given as None."""
        out = self._attempt(list(reports))
        again = [i for i, t in enumerate(out) if t is None]
        self.failures += len(again)
        if again:
            for i, t in zip(again, self._attempt([reports[i] for i in again])):
                out[i] = t
            self.failed += sum(out[i] is None for i in again)
        return out

    def propose(self, reports: Sequence[str]) -> list[list[str] | None]:
        """Candidate features per report (None where the request failed)."""
        return [None if t is None else parse_answer(t, self.max_features)[0] for t in self.complete(reports)]

    def close(self) -> None:
        """Release the engine / connections (nothing by default)."""


class KnowledgeBackend(Backend):
    """The offline knowledge base (``fgclep_plugin.augment.knowledge.propose``): no model, no network."""

    name = "kb"

    def __init__(
        self, model: str = "", propose_fn: Callable[[str], list[str]] | None = None, **kw: Any
    ) -> None:
        version = "custom"
        if propose_fn is None:
            from . import knowledge

            propose_fn, version = knowledge.propose, str(getattr(knowledge, "VERSION", "builtin"))
        super().__init__(model or version, **kw)
        self.max_features = 10**6  # the table's proposals are kept whole (the answer cap is for LLMs)
        self._propose = propose_fn

    def _attempt(self, reports: Sequence[str]) -> list[str | None]:
        return [json.dumps(list(self._propose(r))) for r in reports]


class VllmBackend(Backend):
    """The vLLM offline engine: one batched ``llm.chat`` per call, temperature 0, JSON-schema structured output.

    Engine options (``tensor_parallel_size``, ``max_model_len``, ``gpu_memory_utilization``,
    ``kv_cache_memory_bytes``, ``dtype``, ``enforce_eager``, ...) go to ``vllm.LLM`` unchanged; None means
    vLLM's default.
    """

    name = "vllm"

    def __init__(
        self, model: str, max_tokens: int = 256, seed: int = 0, engine: dict | None = None, **kw: Any
    ):
        super().__init__(model, **kw)
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        options = {k: v for k, v in (engine or {}).items() if v is not None}
        one_engine_per_process(int(options.get("tensor_parallel_size") or 1))
        self.llm = LLM(model=model, seed=seed, **options)
        self.params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            structured_outputs=StructuredOutputsParams(json=self.schema),
        )
        tokenizer = self.llm.get_tokenizer()
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        if not self.chat:
            warnings.warn(
                f"{model}: tokenizer has no chat template; sending plain-text prompts", stacklevel=2
            )

    def _run(self, reports: Sequence[str]) -> list[str | None]:
        messages = [build_messages(r, self.max_features) for r in reports]
        if self.chat:
            outputs = self.llm.chat(messages, self.params, use_tqdm=False)
        else:
            prompts = [plain_prompt(m) for m in messages]
            outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        texts: list[str | None] = []
        for o in outputs:
            c = o.outputs[0] if o.outputs else None
            failed = c is None or c.finish_reason in ("error", "abort")
            texts.append(None if failed else c.text)
        return texts

    def _attempt(self, reports: Sequence[str]) -> list[str | None]:
        try:
            return self._run(reports)
        except Exception as e:  # noqa: BLE001 (an engine error on the batch: try the reports one by one)
            if len(reports) == 1:
                warnings.warn(f"vllm request failed: {type(e).__name__}: {e}", stacklevel=2)
                return [None]
            return [self._attempt([r])[0] for r in reports]


class OpenAIBackend(Backend):
    """An OpenAI-compatible chat server (``vllm serve``), structured output via ``response_format`` json_schema
    (or vLLM's ``structured_outputs`` field); ``concurrency`` requests in flight (threads, one httpx2 pool).

    A transient failure (HTTP 408 / 429 / 5xx, no connection) is retried up to ``max_retries`` times after a
    wait: the server's Retry-After, else exponential backoff with jitter (``backoff_base`` * 2**retry, at most
    ``max_wait`` seconds); any other failure (a 4xx, a reply that is no chat completion) is retried once, at
    once. Each retry and each final failure is a warning naming the report and the server's error. Once
    :data:`SERVER_DOWN` reports in a row are lost to transient errors the server is taken as down: later
    reports get one try each (a dead server fails the run in seconds, not hours) until one is answered.
    """

    name = "openai"
    sleep = staticmethod(time.sleep)  # the wait between tries (tests record it instead)

    def __init__(
        self,
        model: str | None,
        base_url: str,
        max_tokens: int = 256,
        concurrency: int = 4,
        timeout: float = 600.0,
        structured: str = "response_format",
        api_key: str | None = None,
        max_retries: int = 4,
        backoff_base: float = 1.0,
        max_wait: float = 60.0,
        **kw: Any,
    ):
        if structured not in ("response_format", "structured_outputs", "none"):
            raise ValueError(
                f"structured must be response_format, structured_outputs or none, got {structured!r}"
            )
        if concurrency < 1 or max_retries < 0:
            raise ValueError(f"need concurrency >= 1 and max_retries >= 0, got {concurrency}, {max_retries}")
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.client = JsonClient(self.base_url, key, timeout, concurrency)
        try:
            model = model or self._served_model()
        except RuntimeError:
            self.client.close()
            raise
        super().__init__(model, **kw)
        self.max_tokens, self.concurrency, self.structured = max_tokens, concurrency, structured
        self.max_retries, self.backoff_base, self.max_wait = max_retries, backoff_base, max_wait
        self._notices = itertools.count()  # retry warnings given (the first RETRY_WARNINGS are shown)
        self.lost_in_a_row = 0  # reports whose every try failed transiently, since the last answer
        self._lock = threading.Lock()

    def _served_model(self) -> str:
        """The first model the server lists (one try: a wrong URL is told at once)."""
        data = self.client.request("GET", "/models", timeout=30).get("data")
        ids = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        if not ids or not isinstance(ids[0], str):
            raise RuntimeError(f"{self.base_url}/models lists no model; pass --model")
        return ids[0]

    def body(self, report: str) -> dict:
        """The chat-completions request for one report."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": build_messages(report, self.max_features),
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        if self.structured == "response_format":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "waveform_features", "schema": self.schema},
            }
        elif self.structured == "structured_outputs":
            body["structured_outputs"] = {"json": self.schema}
        return body

    def _ask(self, report: str) -> str:
        """One try: the answer text, or RequestFailed when the reply is not a chat completion with a string
        answer."""
        reply = self.client.request("POST", "/chat/completions", self.body(report))
        choices = reply.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            raise RequestFailed("the reply has no 'choices' list of objects")
        if choice.get("finish_reason") in ("error", "abort"):
            raise RequestFailed(f"the server aborted the answer (finish_reason {choice['finish_reason']})")
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str):
            raise RequestFailed(f"the answer's content is a JSON {type(content).__name__}, not a string")
        return content or ""

    def _one(self, report: str) -> tuple[str | None, int]:
        """(answer text or None, failed tries) for one report, retried as the class docstring says."""
        tries = 0
        while True:
            tries += 1
            try:
                answer = self._ask(report)
                self.lost_in_a_row = 0
                return answer, tries - 1
            except RequestFailed as e:
                down = self.lost_in_a_row >= SERVER_DOWN
                limit = (0 if down else self.max_retries) if e.transient else min(1, self.max_retries)
                if tries > limit:
                    self._lost(e.transient)
                    self.errors[report] = str(e)[:300]
                    warnings.warn(
                        f"openai request for report {report!r:.80} failed ({tries} tries): {e}", stacklevel=1
                    )
                    return None, tries
                wait = (
                    backoff(tries - 1, e.retry_after, self.backoff_base, self.max_wait) if e.transient else 0
                )
                self._notice(
                    f"openai request for report {report!r:.80} failed: {e}; retry {tries} of {limit}", wait
                )
                self.sleep(wait)

    def _lost(self, transient: bool) -> None:
        """Count a report lost to a transient error; warn once when that makes the server look down."""
        with self._lock:
            self.lost_in_a_row = self.lost_in_a_row + 1 if transient else 0
            now_down = self.lost_in_a_row == SERVER_DOWN
        if now_down:
            warnings.warn(
                f"{self.base_url}: {SERVER_DOWN} reports in a row failed after every retry; the server looks "
                "down: later reports get one try each until one is answered",
                stacklevel=2,
            )

    def _notice(self, message: str, wait: float) -> None:
        """Warn of a retry (the first :data:`RETRY_WARNINGS` of this backend; later ones are silent)."""
        n = next(self._notices)
        if n <= RETRY_WARNINGS:
            last = " (further retries are not named)" if n == RETRY_WARNINGS else ""
            warnings.warn(f"{message} in {wait:.1f} s{last}", stacklevel=2)

    def complete(self, reports: Sequence[str]) -> list[str | None]:
        """Answer texts of ``reports`` in order, ``concurrency`` at a time; None where every try failed."""
        if not reports:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(reports))) as pool:
            results = list(pool.map(self._one, reports))
        self.failures += sum(failed > 0 for _, failed in results)
        self.failed += sum(text is None for text, _ in results)
        return [text for text, _ in results]

    def close(self) -> None:
        self.client.close()


class TransformersBackend(Backend):
    """Any local causal LM through ``transformers`` ``generate`` (greedy, left-padded batches; no grammar: the
    parser copes with prose and fences)."""

    name = "transformers"

    def __init__(
        self, model: str, max_tokens: int = 256, batch_size: int = 8, dtype: str | None = None, **kw: Any
    ):
        super().__init__(model, **kw)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        torch_dtype = getattr(torch, dtype) if dtype and dtype != "auto" else None
        self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).eval()
        self.max_tokens, self.batch_size = max_tokens, batch_size

    def _prompt(self, report: str) -> str:
        messages = build_messages(report, self.max_features)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return plain_prompt(messages)

    def _attempt(self, reports: Sequence[str]) -> list[str | None]:
        out: list[str | None] = []
        for i in range(0, len(reports), self.batch_size):
            prompts = [self._prompt(r) for r in reports[i : i + self.batch_size]]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc.pop("token_type_ids", None)
            with self.torch.inference_mode():
                ids = self.lm.generate(
                    **enc,
                    max_new_tokens=self.max_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            out.extend(
                self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            )
        return out


class LazyBackend(Backend):
    """A backend built on its first call: a run whose reports are all cached never loads the model."""

    def __init__(self, name: str, model: str, build: Callable[[], Backend], **kw: Any) -> None:
        super().__init__(model, **kw)
        self.name, self._build, self._inner = name, build, None

    def complete(self, reports: Sequence[str]) -> list[str | None]:
        if self._inner is None:
            self._inner = self._build()
        out = self._inner.complete(reports)
        self.failures, self.failed = self._inner.failures, self._inner.failed
        self.errors = self._inner.errors
        return out

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def one_engine_per_process(tensor_parallel_size: int = 1) -> None:
    """Under ``torchrun`` / ``accelerate launch`` (``LOCAL_RANK`` set): give this process its own GPUs.

    Process ``LOCAL_RANK`` sees devices ``[LOCAL_RANK * tp, (LOCAL_RANK + 1) * tp)`` of the visible ones, and
    the launcher's rendezvous variables are removed so vLLM starts a plain single-process engine (the reports
    are already split by :func:`fgclep_plugin.augment.generate.part_of`, so engines never talk to each other).
    """
    local = os.environ.get("LOCAL_RANK")
    if local is None:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = (
        visible.split(",")
        if visible
        else [str(i) for i in range(int(os.environ.get("LOCAL_WORLD_SIZE", "1")) * tensor_parallel_size)]
    )
    mine = devices[int(local) * tensor_parallel_size : (int(local) + 1) * tensor_parallel_size]
    if len(mine) == tensor_parallel_size:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    for var in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "GROUP_RANK",
    ):
        os.environ.pop(var, None)


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """Chat messages as one plain-text prompt, for tokenizers without a chat template."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*lines, "Assistant:"])


def make_backend(name: str, model: str | None = None, **options: Any) -> Backend:
    """Backend ``name`` (one of :data:`BACKENDS`) with its options; model backends load on first use."""
    if name == "kb":
        return KnowledgeBackend(model or "", **options)
    if name == "openai":
        return OpenAIBackend(model, **options)
    if not model:
        raise ValueError(f"--backend {name} needs --model (a local model directory or hub id)")
    classes = {"vllm": VllmBackend, "transformers": TransformersBackend}
    if name in classes:
        limits = {k: options[k] for k in ("max_features", "max_chars") if k in options}
        return LazyBackend(name, model, lambda: classes[name](model, **options), **limits)
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
