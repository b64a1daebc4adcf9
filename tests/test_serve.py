"""`loragen serve` (LitServe) and the edge client, for real: the server runs as a `loragen serve`
process on 127.0.0.1 and a free port (tiny models), and every call goes over HTTP."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from loragen import LoRAGenError
from loragen.deploy.artifacts import META_FILE
from loragen.deploy.cli import main as deploy_main
from loragen.deploy.client import GeneratorClient, LocalService
from loragen.deploy.deployment import Deployment
from loragen.deploy.gates import GatesRecord
from tests.conftest import PROMPT, _save_checkpoint, _tensors

KEY = "test-key-0123456789"


def Server(ckpt: Path, workdir: Path, *args: str, key: str | None = KEY) -> LocalService:  # noqa: N802
    """A real `loragen serve` on 127.0.0.1, one thread, its own gates cache (``.cache``)."""
    service = LocalService(
        ckpt, workdir, *args, key=key, env={"LORAGEN_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
    )
    service.cache = workdir / "cache"
    return service


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _save_checkpoint(tmp_path_factory.mktemp("serve") / "gen.ckpt", "tiny:qwen2", "tiny:llama")


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    running = Server(
        ckpt,
        tmp_path_factory.mktemp("server"),
        "--max_batch_size",
        "8",
        "--batch_timeout",
        "0.3",
        "--max_body_bytes",
        "65536",
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def reference(ckpt) -> Deployment:
    """The same checkpoint loaded in this process without any cache: what `loragen generate` computes."""
    deployment = Deployment(ckpt, cache=False)
    _ = deployment.module
    return deployment


def _post(url: str, body: bytes, key: str | None = KEY, content_type: str = "application/json") -> tuple[int, dict]:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + "/v1/generate", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.heavy
def test_gates_over_http_equal_a_local_generation_and_apply_is_bit_identical(
    server, reference, ckpt, tmp_path, monkeypatch
):
    client = GeneratorClient(server.url, api_key=KEY)
    record, cached = client.gates(PROMPT)
    local, _ = reference.gates(PROMPT)
    assert not cached and torch.equal(record.gates, local.gates)
    assert record.checkpoint_sha256 == reference.info.sha256 and record.fingerprint == reference.info.fingerprint
    again, cached = client.gates(PROMPT)
    assert cached and torch.equal(again.gates, record.gates)  # the server's cache: no second cloud pass

    info = client.model_info()
    assert info["checkpoint_sha256"] == reference.info.sha256 and info["fingerprint"] == reference.info.fingerprint
    assert info["pool"]["num_experts"] == 4 and info["pool"]["layers"] == record.gates.shape[0]

    monkeypatch.setenv("LORAGEN_CACHE", str(tmp_path / "own-cache"))  # the local generation: its own cold cache
    monkeypatch.setenv("LORAGEN_API_KEY", KEY)
    out = io.StringIO()
    deploy_main(
        [
            "generate",
            "--ckpt_path",
            str(ckpt),
            "--system_prompt",
            PROMPT,
            "--output",
            str(tmp_path / "gen"),
            "--format",
            "merged",
            "--no_cache",
        ],
        stdout=out,
    )
    deploy_main(
        [
            "apply",
            "--server",
            server.url,
            "--system_prompt",
            PROMPT,
            "--ckpt_path",
            str(ckpt),
            "--output",
            str(tmp_path / "served"),
            "--format",
            "merged",
        ],
        stdout=out,
    )
    generated, served = (_tensors(tmp_path / d / "model.safetensors") for d in ("gen", "served"))
    assert generated.keys() == served.keys() and all(torch.equal(generated[k], served[k]) for k in generated)
    meta = json.loads((tmp_path / "served" / META_FILE).read_text())
    assert meta["applied_from"] == server.url and meta["server_cached"] is True

    # a server generation lands in the cache `loragen generate` reads: a later local run skips the cloud
    fresh = "Answer in French."
    client.gates(fresh)
    assert Deployment(ckpt, cache_dir=server.cache / "generated").gates(fresh)[1] is True


def test_peft_archive_holds_the_adapter_loragen_generate_writes(server, ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAGEN_CACHE", str(tmp_path / "cache"))
    archive = GeneratorClient(server.url, api_key=KEY).peft_archive(PROMPT)
    zipfile.ZipFile(io.BytesIO(archive)).extractall(tmp_path / "served")
    deploy_main(
        [
            "generate",
            "--ckpt_path",
            str(ckpt),
            "--system_prompt",
            PROMPT,
            "--output",
            str(tmp_path / "gen"),
            "--format",
            "peft",
            "--no_cache",
        ],
        stdout=io.StringIO(),
    )
    generated, served = (_tensors(tmp_path / d / "adapter_model.safetensors") for d in ("gen", "served"))
    assert generated.keys() == served.keys() and all(torch.equal(generated[k], served[k]) for k in generated)


def test_concurrent_distinct_prompts_are_batched_and_equal_one_at_a_time(server, reference):
    prompts = [f"You are assistant number {i}. Answer in {i + 1} words." for i in range(8)]
    client = GeneratorClient(server.url, api_key=KEY)
    raw: list[dict] = []

    def call(prompt: str) -> dict:
        status, body = _post(server.url, json.dumps({"system_prompt": prompt}).encode())
        assert status == 200, body
        return body

    with ThreadPoolExecutor(max_workers=8) as pool:
        raw = list(pool.map(call, prompts))
    assert max(body["batch_size"] for body in raw) > 1  # the worker handled several requests in one pass
    for prompt, body in zip(prompts, raw, strict=True):
        served = GatesRecord.from_dict(body)
        alone, _ = reference.gates(prompt)
        # padding in a batch may move the last bits of the cloud's states: same experts, gates within 1e-5
        assert torch.equal(served.gates > 0, alone.gates > 0)
        torch.testing.assert_close(served.gates, alone.gates, atol=1e-5, rtol=0)
    assert client.gates(prompts[0])[1] is True


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(server):
    good = json.dumps({"system_prompt": PROMPT}).encode()
    cases = {
        "no key": (good, None, "application/json", 401, "API key"),
        "wrong key": (good, "nope", "application/json", 401, "API key"),
        "malformed JSON": (b"{bad", KEY, "application/json", 422, "not valid JSON"),
        "not JSON content": (good, KEY, "text/plain", 422, "Content-Type: application/json"),
        "empty prompt": (json.dumps({"system_prompt": "  "}).encode(), KEY, "application/json", 422, "empty"),
        "missing prompt": (json.dumps({"format": "gates"}).encode(), KEY, "application/json", 422, "system_prompt"),
        "unknown format": (
            json.dumps({"system_prompt": "x", "format": "zip"}).encode(),
            KEY,
            "application/json",
            422,
            "format",
        ),
        "unknown field": (
            json.dumps({"system_prompt": "x", "temperature": 1}).encode(),
            KEY,
            "application/json",
            422,
            "temperature",
        ),
        "prompt over the cloud's context": (
            json.dumps({"system_prompt": "word " * 3000}).encode(),
            KEY,
            "application/json",
            422,
            "over the limit",
        ),
        "body over the size limit": (
            json.dumps({"system_prompt": "x" * 70000}).encode(),
            KEY,
            "application/json",
            413,
            "",
        ),
    }
    for name, (body, key, kind, status, words) in cases.items():
        got, answer = _post(server.url, body, key=key, content_type=kind)
        assert got == status, (name, answer)
        assert words in str(answer.get("detail", "")), (name, answer)
        assert "word word word" not in json.dumps(answer)  # the request is never echoed back
    with pytest.raises(LoRAGenError, match="refused /v1/model with 401"):
        GeneratorClient(server.url).model_info()
    assert GeneratorClient(server.url, api_key=KEY).health() and not GeneratorClient(server.url).health()
    # a bad request batched together with good ones fails alone
    bodies = [good, json.dumps({"system_prompt": "word " * 3000}).encode(), good]
    with ThreadPoolExecutor(max_workers=3) as pool:
        statuses = [s for s, _ in pool.map(lambda b: _post(server.url, b), bodies)]
    assert statuses == [200, 422, 200]


@pytest.mark.heavy
def test_a_server_killed_mid_request_leaves_a_clear_error_and_no_output(ckpt, tmp_path):
    slow = Server(ckpt, tmp_path, "--max_batch_size", "8", "--batch_timeout", "20", key=None)  # requests wait
    try:
        out = tmp_path / "out"
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loragen.cli",
                "apply",
                "--server",
                slow.url,
                "--system_prompt",
                PROMPT,
                "--ckpt_path",
                str(ckpt),
                "--output",
                str(out),
                "--format",
                "merged",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "LORAGEN_CACHE": str(tmp_path / "c")},
        )
        time.sleep(8)  # the client has loaded its edge side and its request is queued in the server
        assert client.poll() is None
        slow.kill()
        _, err = client.communicate(timeout=60)
    finally:
        slow.stop()
    assert client.returncode == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("loragen: error:")]
    assert len(lines) == 1 and "no answer from the server" in lines[0], err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_serve_refuses_to_start_without_a_key_or_with_bad_options(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LORAGEN_API_KEY", raising=False)
    for argv, words in (
        (["--ckpt_path", str(ckpt)], "no API key"),
        (["--ckpt_path", str(tmp_path / "missing.ckpt"), "--insecure-no-auth"], "does not exist"),
        (["--ckpt_path", str(ckpt), "--insecure-no-auth", "--port", "80"], "--port"),
        (["--ckpt_path", str(ckpt), "--insecure-no-auth", "--max_batch_size", "0"], "max_batch_size"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            deploy_main(["serve", *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("loragen: error:") and len(err.splitlines()) == 1 and words in err, err
    with pytest.raises(LoRAGenError, match="not an http"):
        GeneratorClient("127.0.0.1:8000")


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie holds no port and runs nothing


@pytest.mark.heavy
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_to_the_serve_pid_alone_stops_every_process_and_frees_the_port(ckpt, tmp_path, signame):
    import signal
    import socket

    service = Server(ckpt, tmp_path)
    try:
        workers = _descendants(service.proc.pid)
        assert workers, "LitServe runs its API server and inference worker as processes"
        status, _ = _post(service.url, json.dumps({"system_prompt": PROMPT}).encode())
        assert status == 200
        start = time.monotonic()
        os.kill(service.proc.pid, getattr(signal, signame))  # the PID only, not its process group
        assert service.proc.wait(timeout=20) == 0
        waited = time.monotonic() - start
        deadline = time.monotonic() + 10
        while any(_running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in workers if _running(p)], "a worker outlived the serve process"
        with socket.socket() as sock:  # nothing listens on the port: a new server binds it (as uvicorn does,
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the closed connections' TIME_WAIT)
            sock.bind(("127.0.0.1", service.port))
            sock.listen()
        assert waited < 15, f"stopping took {waited:.1f} s"
        assert "loragen serve: stopped" in service.log_path.read_text()
    finally:
        service.stop()
