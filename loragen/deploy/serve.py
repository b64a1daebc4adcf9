"""``loragen serve``: the cloud half of LoRA-Gen as an HTTP service (LitServe, on FastAPI + uvicorn).

A trained generator is loaded once, in LitServe's inference worker, and serves

- ``POST /v1/generate`` ``{"system_prompt": TEXT, "format": "gates" | "peft"}``: the gates payload
  (JSON: the ``L × n`` gates with their sha256, the checkpoint and system-prompt sha256, the pair
  fingerprint: the record ``loragen generate --format gates`` writes) or a PEFT adapter as a zip;
- ``GET /v1/model``: the pair fingerprint, the expert-pool shape and the checkpoint sha256;
- ``GET /health``: ``ok`` once the worker has loaded the generator (LitServe's; it needs the key too).

Concurrent requests are batched (LitServe's dynamic batching: up to ``max_batch_size`` requests
arriving within ``batch_timeout`` seconds): their distinct, uncached prompts go through the cloud in
one padded pass (``Deployment.gates_many``). The gates cache is ``loragen generate``'s (by checkpoint
and prompt sha256), so a prompt either of them has seen skips the cloud.

Security: every request (``/health`` included) needs the API key (``Authorization: Bearer KEY`` or ``X-API-Key``)
from ``$LORAGEN_API_KEY`` or ``--api_key_file``, unless ``--insecure-no-auth`` is given; only the key's
sha256 is kept and the key is never logged. The server binds to 127.0.0.1 unless told otherwise.
Bad requests get a 4xx and the server keeps serving, every other request of the batch included:
a wrong or missing key 401, a body over ``max_body_bytes`` 413, malformed JSON, unknown fields, an
empty prompt or an unknown format 422 (checked before the request is queued), a prompt longer than
the cloud's context minus the meta tokens 422 (in the worker, for that request alone).
"""

# no `from __future__ import annotations`: LitServe and FastAPI read decode_request's annotation as a class
import contextlib
import hashlib
import hmac
import io
import os
import signal
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import litserve as ls
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, field_validator

from loragen import LoRAGenError
from loragen.deploy.client import API_KEY_ENV, GENERATE_PATH, MODEL_PATH, read_api_key

PAYLOAD_FORMATS = ("gates", "peft")


class GenerateRequest(BaseModel):
    """The body of ``POST /v1/generate`` (validated before the request reaches the worker)."""

    model_config = ConfigDict(extra="forbid")
    system_prompt: str
    format: Literal["gates", "peft"] = "gates"

    @field_validator("system_prompt")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the system prompt is empty: send the task's instruction")
        return value


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class _Failure:
    """A request the worker could not serve (its status and message), answered alone."""

    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


class GeneratorAPI(ls.LitAPI):
    """LitServe API around a ``Deployment`` (loaded in ``setup``, in the inference worker)."""

    def __init__(
        self,
        ckpt_path: str,
        *,
        cloud: str | None = None,
        edge: str | None = None,
        cloud_states: str | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
        api_key: str | None = None,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=GENERATE_PATH)
        self.ckpt_path, self.cloud, self.edge, self.cloud_states = ckpt_path, cloud, edge, cloud_states
        self.use_cache, self.cache_dir = cache, cache_dir
        self._key_digest = key_digest(api_key) if api_key else None  # the key itself is never kept

    # ------------------------------------------------------------------ auth (API server process)

    def authorize(self, request: Request) -> None:
        if self._key_digest is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not given or not hmac.compare_digest(key_digest(given), self._key_digest):
            raise HTTPException(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'")

    # ------------------------------------------------------------------ worker

    def setup(self, device: str) -> None:
        from loragen.deploy.deployment import Deployment

        # alike in shape to other keyword calls (deploy/cli.py's generate, release.py's export_release, moe.py's
        # install_mixlora): different functions; kept apart
        self.deployment = Deployment(
            self.ckpt_path,
            cloud=self.cloud,
            edge=self.edge,
            cloud_states=self.cloud_states,
            cache=self.use_cache,
            cache_dir=self.cache_dir,
        )
        _ = self.deployment.module  # load the cloud and edge now, not on the first request

    def decode_request(self, request: GenerateRequest) -> GenerateRequest:
        return request

    def batch(self, inputs: list[GenerateRequest]) -> list[GenerateRequest]:
        return list(inputs)

    def unbatch(self, output: list[Any]) -> list[Any]:
        return list(output)

    def predict(self, x: GenerateRequest | list[GenerateRequest]) -> Any:
        requests = x if isinstance(x, list) else [x]
        outcomes = self.deployment.gates_many([r.system_prompt for r in requests])
        answers: list[Any] = []
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, LoRAGenError):
                answers.append(_Failure(422, " ".join(str(outcome).split())))
                continue
            record, cached = outcome
            try:
                answers.append(self._payload(record, cached, request.format, len(requests)))
            except LoRAGenError as err:
                answers.append(_Failure(500, " ".join(str(err).split())))
        return answers if isinstance(x, list) else answers[0]

    def _payload(self, record: Any, cached: bool, fmt: str, batch_size: int) -> dict[str, Any] | bytes:
        import loragen

        if fmt == "gates":  # `batch_size`: requests the worker handled together with this one
            return {
                "loragen_meta": 1,
                "loragen_version": loragen.__version__,
                "format": "gates",
                **record.to_dict(),
                "cached": cached,
                "batch_size": batch_size,
            }
        from loragen.deploy.generate import export

        with tempfile.TemporaryDirectory(prefix="loragen-serve-") as tmp:
            out = Path(tmp) / "adapter"
            export(self.deployment, record, out, "peft", reused=cached)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(out.rglob("*")):
                    if path.is_file():
                        archive.write(path, path.relative_to(out).as_posix())
            return buffer.getvalue()

    def encode_response(self, output: Any) -> Any:
        if isinstance(output, _Failure):
            return JSONResponse(status_code=output.status, content={"detail": output.detail})
        if isinstance(output, bytes):
            return Response(content=output, media_type="application/zip")
        return output


def model_info(ckpt_path: str) -> dict[str, Any]:
    """What ``GET /v1/model`` answers: read from the checkpoint once, in the main process."""
    from loragen.checkpoint import read_checkpoint

    info = read_checkpoint(ckpt_path)
    pool = info.pool
    return {
        "checkpoint_sha256": info.sha256,
        "fingerprint": info.fingerprint,
        "pool": {
            "num_experts": pool.num_experts,
            "top_k": pool.top_k,
            "rank": pool.rank,
            "lora_alpha": pool.lora_alpha,
            "layers": info.fingerprint["edge_layers"],
            "target_modules": sorted(info.fingerprint.get("target_shapes", {})),
        },
        "formats": list(PAYLOAD_FORMATS),
    }


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem (never echoing the request body back)."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ())[1:] if not isinstance(part, int))
        if error.get("type") == "model_attributes_type" or (error.get("type") == "missing" and not where):
            problems.append(
                'the body must be a JSON object like {"system_prompt": TEXT, "format": "gates"} '
                "sent with Content-Type: application/json"
            )
        elif error.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})")
        else:
            problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return JSONResponse(status_code=422, content={"detail": "; ".join(dict.fromkeys(problems))})


# GeneratorAPI.__init__'s keywords (passed on) plus the server's own: alike in shape, kept apart
def build_server(
    ckpt_path: str,
    *,
    cloud: str | None = None,
    edge: str | None = None,
    cloud_states: str | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
    api_key: str | None = None,
    max_batch_size: int = 8,
    batch_timeout: float = 0.01,
    max_body_bytes: int = 1 << 20,
    timeout: float = 120.0,
) -> ls.LitServer:
    info = model_info(ckpt_path)  # a missing or foreign checkpoint fails here, before any worker starts
    if cloud_states:  # a missing or foreign states file too
        from loragen.models.components.cloud_states import CloudStates

        CloudStates.check_file(cloud_states)  # the header only: the worker loads the states
    api = GeneratorAPI(
        ckpt_path,
        cloud=cloud,
        edge=edge,
        cloud_states=cloud_states,
        cache=cache,
        cache_dir=cache_dir,
        api_key=api_key,
        max_batch_size=max_batch_size,
        batch_timeout=batch_timeout,
    )
    server = ls.LitServer(
        api, accelerator="auto", devices=1, timeout=timeout, max_payload_size=max_body_bytes, disable_openapi_url=True
    )

    def describe() -> dict[str, Any]:
        return info

    server.app.add_api_route(MODEL_PATH, describe, methods=["GET"], dependencies=[Depends(api.authorize)])
    server.app.add_exception_handler(RequestValidationError, _validation_error)
    return server


def serve(
    ckpt_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    insecure_no_auth: bool = False,
    api_key_file: str | None = None,
    log_level: str = "warning",
    **kwargs: Any,
) -> None:
    """``loragen serve``: blocks until interrupted."""
    key = read_api_key(api_key_file)
    if key is None and not insecure_no_auth:
        raise LoRAGenError(
            f"no API key: set ${API_KEY_ENV} or pass --api_key_file FILE (or --insecure-no-auth for local use only)"
        )
    if key is not None and insecure_no_auth:
        raise LoRAGenError("--insecure-no-auth was given with an API key: drop one of them")
    server = build_server(ckpt_path, api_key=key, **kwargs)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(
        f"loragen serve: {ckpt_path} at {where} (POST {GENERATE_PATH}, GET {MODEL_PATH}, GET /health; "
        f"auth {'off' if key is None else 'on'})",
        flush=True,
    )
    with stop_on_signals():
        server.run(host=host, port=port, log_level=log_level, generate_client_file=False, num_api_servers=1)
    print("loragen serve: stopped", flush=True)


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM / SIGINT / SIGHUP to the serve process stop the service as Ctrl-C does: LitServe's graceful
    shutdown (its API server finishes the requests in flight, then it and the inference worker are
    terminated, killed if they do not end in a few seconds) and the port is free when the process exits.
    Without this, SIGTERM ended only the parent and left the workers serving, orphaned, on the port.
    The handler acts in the serve process alone; a worker process that inherits it ends as by default."""
    parent = os.getpid()

    def handler(signum: int, _frame: Any) -> None:
        if os.getpid() != parent:  # a forked worker: the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for name in STOP_SIGNALS:  # a second signal during the shutdown does not interrupt it
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {name: signal.signal(getattr(signal, name), handler) for name in STOP_SIGNALS}
    try:
        yield
    finally:
        for name, action in previous.items():
            signal.signal(getattr(signal, name), action)
