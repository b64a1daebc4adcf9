"""The edge half of the online service: fetch gates from ``loragen serve`` and merge them locally.

``GeneratorClient`` speaks the service's HTTP API with the standard library only. The gates it
returns are checked (their sha256, the system-prompt hash) before use, and ``loragen apply --server``
then checks the server's pair fingerprint and checkpoint against the local checkpoint and builds the
PEFT adapter / merged model / gates file exactly as ``loragen apply`` does from a gates file: the
result is bit-identical to ``loragen generate`` on the same checkpoint and prompt, and the edge
never loads the cloud model.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loragen import LoRAGenError
from loragen.deploy.artifacts import sha256_text
from loragen.deploy.gates import GatesRecord

API_KEY_ENV = "LORAGEN_API_KEY"  # the service's key, on the server and on clients
GENERATE_PATH = "/v1/generate"
MODEL_PATH = "/v1/model"


def read_api_key(api_key_file: str | None) -> str | None:
    """The key from ``--api_key_file`` (first line) or ``$LORAGEN_API_KEY``; None if neither is set."""
    if api_key_file:
        path = Path(api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise LoRAGenError(f"cannot read the API key file {path} ({err.__class__.__name__})") from err
        if not key:
            raise LoRAGenError(f"the API key file {path} is empty: write the key on its first line")
        return key
    return os.environ.get(API_KEY_ENV) or None


class GeneratorClient:
    """A client of ``loragen serve`` at ``url`` (e.g. ``http://127.0.0.1:8000``)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise LoRAGenError(f"--server {url!r} is not an http(s) URL: e.g. http://127.0.0.1:8000")
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    def request(self, path: str, body: dict[str, Any] | None = None) -> tuple[bytes, str]:
        """GET ``path`` (or POST ``body`` as JSON) with the key; the body and content type, or a one-line
        ``LoRAGenError`` naming the refusal or the unreachable server."""
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.url + path, data=data, headers=headers, method="POST" if body is not None else "GET"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raise LoRAGenError(f"the server at {self.url} refused {path} with {err.code}: {_detail(err)}") from None
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LoRAGenError(
                f"no answer from the server at {self.url} for {path} ({reason.__class__.__name__}: "
                f"{reason}): is `loragen serve` running there?"
            ) from None

    def health(self) -> bool:
        try:
            body, _ = self.request("/health")
        except LoRAGenError:
            return False
        return body.strip().strip(b'"') == b"ok"

    def model_info(self) -> dict[str, Any]:
        """The server's pair fingerprint, expert-pool shape and checkpoint sha256."""
        body, _ = self.request(MODEL_PATH)
        return json.loads(body)

    def gates(self, system_prompt: str) -> tuple[GatesRecord, bool]:
        """The gates for ``system_prompt`` (checked), and whether the server had them cached."""
        body, _ = self.request(GENERATE_PATH, {"system_prompt": system_prompt, "format": "gates"})
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LoRAGenError(
                f"the server at {self.url} sent gates that are not JSON ({err.__class__.__name__})"
            ) from None
        record = GatesRecord.from_dict(data, where=f"gates from {self.url}")  # checks the values' sha256
        if record.system_prompt_sha256 != sha256_text(system_prompt):
            raise LoRAGenError(f"the server at {self.url} answered for another system prompt (sha256 mismatch)")
        return record, bool(data.get("cached"))

    def peft_archive(self, system_prompt: str) -> bytes:
        """The PEFT adapter the server builds, as zip bytes (for clients without loragen)."""
        body, kind = self.request(GENERATE_PATH, {"system_prompt": system_prompt, "format": "peft"})
        if "zip" not in kind:
            raise LoRAGenError(f"the server at {self.url} sent {kind or 'no content type'} instead of a zip archive")
        return body


def _detail(err: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(err.read() or b"{}")
    except (ValueError, OSError):
        return err.reason or "no detail"
    detail = data.get("detail", err.reason) if isinstance(data, dict) else data
    if isinstance(detail, list):  # FastAPI validation errors: a list of {loc, msg}
        detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
    return str(detail)


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalService:
    """A ``loragen serve`` process on 127.0.0.1 and a free port, in its own process group (so stopping or
    killing it reaches its LitServe workers too): for tests, benchmarks and local tools.

    ``args`` are further ``loragen serve`` options; the API key is passed through ``--api_key_file``
    (``key=None``: ``--insecure-no-auth``). The constructor returns once ``/health`` answers ``ok``."""

    def __init__(
        self,
        ckpt_path: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        *args: str,
        key: str | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 300.0,
        name: str = "serve",
    ) -> None:
        import subprocess
        import sys
        import time

        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = GeneratorClient(self.url, api_key=key)
        auth = ["--insecure-no-auth"]
        if key is not None:
            key_file = self.workdir / f"{name}.key"
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
            auth = ["--api_key_file", str(key_file)]
        self.log_path = self.workdir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        ckpt = Path(ckpt_path).resolve() if Path(ckpt_path).exists() else ckpt_path  # the server runs in workdir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loragen.cli",
                "serve",
                "--ckpt_path",
                str(ckpt),
                "--port",
                str(self.port),
                *auth,
                *args,
            ],
            cwd=self.workdir,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + startup_timeout
        while not self.client.health():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LoRAGenError(f"loragen serve did not come up: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the whole server (a crash), and wait for it."""
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL after 30 s."""
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
