"""`loragen generate | apply | chat` on tiny models: format parity, bit-identical apply, cache, atomic writes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from loragen.backbones import load_backbone
from loragen.deploy.artifacts import META_FILE, sha256_file, sha256_text
from loragen.deploy.cli import main
from loragen.deploy.deployment import Deployment
from loragen.deploy.generate import export, generate
from loragen.deploy.report import DEFAULT_SAMPLE_INPUT
from tests.conftest import INPUT, PROMPT, _save_checkpoint, _tensors, randomize_pool


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _save_checkpoint(tmp_path_factory.mktemp("deploy") / "gen.ckpt", "tiny:qwen2", "tiny:llama")


@pytest.fixture(scope="module")
def dep(ckpt) -> Deployment:
    """The checkpoint fully loaded once (no cache): the reference for every parity check."""
    deployment = Deployment(ckpt, cache=False)
    _ = deployment.module
    return deployment


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAGEN_CACHE", str(tmp_path / "cache"))


def _ids(text: str) -> torch.Tensor:
    return torch.tensor([load_backbone("tiny:llama").tokenizer(text)["input_ids"]])


def _reference(dep: Deployment, prompt: str = PROMPT, text: str = INPUT) -> tuple[torch.Tensor, torch.Tensor]:
    """(merged, base) edge logits computed straight from the model API (no deploy code in between)."""
    model = dep.module.model
    system = torch.tensor([model.cloud_backbone.tokenizer(prompt)["input_ids"]])
    (lora,) = model.generate(system, torch.ones_like(system))
    with torch.no_grad():
        base = model.edge(input_ids=_ids(text)).logits
        with model.edge_lora.merged_lora(lora):
            merged = model.edge(input_ids=_ids(text)).logits
    assert (merged - base).abs().max() > 1e-3  # the LoRA changes the model
    return merged, base


def _cli(*argv: str, stdin: str = "") -> str:
    out = io.StringIO()
    main(list(argv), stdin=io.StringIO(stdin), stdout=out)
    return out.getvalue()


def test_help_of_every_subcommand_answers_without_importing_torch():
    code = (
        "import sys\nfrom loragen.cli import main\nfor cmd in ('generate', 'apply', 'chat', 'serve'):\n"
        "    sys.argv = ['loragen', cmd, '--help']\n    try:\n        main()\n    except SystemExit as e:\n"
        "        assert e.code in (0, None)\nassert 'torch' not in sys.modules and 'litserve' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for flag in (
        "--system_prompt_file",
        "--format",
        "--gates",
        "--compare",
        "--max_new_tokens",
        "--adapter",
        "--server",
        "--insecure-no-auth",
        "--max_batch_size",
        "--api_key_file",
    ):
        assert flag in out


def test_peft_output_reproduces_merged_logits_and_reports(dep, ckpt, tmp_path):
    from peft import PeftModel

    merged, _ = _reference(dep)
    printed = _cli(
        "generate",
        "--ckpt_path",
        str(ckpt),
        "--system_prompt",
        PROMPT,
        "--output",
        str(tmp_path / "a"),
        "--format",
        "peft",
    )
    peft_model = PeftModel.from_pretrained(load_backbone("tiny:llama").model, str(tmp_path / "a")).eval()
    with torch.no_grad():
        assert (peft_model(input_ids=_ids(INPUT)).logits - merged).abs().max() <= 1e-4
    meta = json.loads((tmp_path / "a" / META_FILE).read_text())
    assert meta["checkpoint_sha256"] == sha256_file(ckpt) and meta["system_prompt_sha256"] == sha256_text(PROMPT)
    assert meta["gates"]["shape"] == [2, 4] and meta["format"] == "peft"
    report = meta["report"]
    tensors = _tensors(tmp_path / "a" / "adapter_model.safetensors")
    tok = load_backbone("tiny:llama").tokenizer
    saved = len(tok(PROMPT + "\n\n" + DEFAULT_SAMPLE_INPUT)["input_ids"]) - len(tok(DEFAULT_SAMPLE_INPUT)["input_ids"])
    assert report["edge_tokens_saved_per_request"] == saved > 0
    estimate = 4 * 8 * sum(s.in_features + s.out_features for s in dep.edge_side.pool.sites)  # k·r = 8
    assert sum(t.numel() * 4 for t in tensors.values()) == estimate
    sizes = report["payload_bytes"]
    assert sizes["peft"] == sum(p.stat().st_size for p in (tmp_path / "a").iterdir() if p.name != META_FILE)
    assert sizes["gates"] < 4096 < estimate < sizes["merged"]
    gain = report["edge_seconds_saved_per_request"]
    expected = (report["cloud_seconds"] + report["merge_seconds"]) / gain if gain > 0 else None
    assert report["break_even_requests"] == expected
    assert "break-even" in printed and "edge tokens saved" in printed and "payload merged" in printed


def test_merged_output_loads_in_plain_transformers_and_edge_is_unmerged(dep, tmp_path):
    merged, _ = _reference(dep)
    before = {k: v.clone() for k, v in dep.edge_side.backbone.model.state_dict().items()}
    record, _ = dep.gates(PROMPT)
    export(dep, record, tmp_path / "m", "merged")
    after = dep.edge_side.backbone.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # unmerged, bit for bit
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", META_FILE} <= names
    code = (
        "import sys, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "d, text, out = sys.argv[1:]\nmodel = AutoModelForCausalLM.from_pretrained(d).eval()\n"
        "ids = torch.tensor([AutoTokenizer.from_pretrained(d)(text)['input_ids']])\n"
        "with torch.no_grad():\n    torch.save({'ids': ids, 'logits': model(input_ids=ids).logits}, out)\n"
        "assert 'loragen' not in sys.modules, 'loragen was imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m"), INPUT, str(tmp_path / "out.pt")],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    result = torch.load(tmp_path / "out.pt")
    assert torch.equal(result["ids"], _ids(INPUT))
    assert (result["logits"] - merged).abs().max() <= 1e-4


def test_apply_rebuilds_each_format_bit_identically_without_the_cloud(ckpt, dep, tmp_path, monkeypatch):
    for fmt in ("gates", "peft", "merged"):
        _cli(
            "generate",
            "--ckpt_path",
            str(ckpt),
            "--system_prompt",
            PROMPT,
            "--output",
            str(tmp_path / fmt),
            "--format",
            fmt,
            "--no_cache",
        )
    gates_file = tmp_path / "gates" / META_FILE
    assert gates_file.stat().st_size < 8192 and [p.name for p in (tmp_path / "gates").iterdir()] == [META_FILE]
    from loragen.deploy.gates import GatesRecord

    model = dep.module.model
    system = torch.tensor([model.cloud_backbone.tokenizer(PROMPT)["input_ids"]])
    direct = model.generate(system, torch.ones_like(system))[0].gates
    assert torch.equal(GatesRecord.from_dict(json.loads(gates_file.read_text())).gates, direct)  # exact round trip

    import loragen.deploy.deployment as deployment

    monkeypatch.setattr(deployment, "load_module", lambda *a, **k: pytest.fail("apply loaded the cloud model"))
    for fmt, weights in (("peft", "adapter_model.safetensors"), ("merged", "model.safetensors")):
        _cli(
            "apply",
            "--gates",
            str(gates_file),
            "--ckpt_path",
            str(ckpt),
            "--output",
            str(tmp_path / f"ap-{fmt}"),
            "--format",
            fmt,
        )
        a, b = _tensors(tmp_path / fmt / weights), _tensors(tmp_path / f"ap-{fmt}" / weights)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        meta = json.loads((tmp_path / f"ap-{fmt}" / META_FILE).read_text())
        assert meta["gates"] == json.loads(gates_file.read_text())["gates"]
        assert meta["system_prompt_sha256"] == sha256_text(PROMPT)


def test_apply_keeps_the_routers_k_when_a_selected_gate_underflows_to_zero(tmp_path):
    """k comes from the checkpoint, never from the gates: a selected expert whose gate underflows to 0.0 still
    counts, so `apply` builds the adapter `generate` builds (same rank, same bits)."""
    import lightning as L

    from loragen.models.lora_gen_module import LoRAGenModule

    torch.manual_seed(0)
    module = LoRAGenModule(
        cloud="tiny:qwen2",
        edge="tiny:llama",
        pool={"num_experts": 4, "top_k": 2, "rank": 4},
        router_hidden=16,
        router_noise="none",
    )
    randomize_pool(module.model.pool, std=0.2)
    with torch.no_grad():  # logits 200, 0, -200, -300 whatever the prompt: top-2 gates (1.0, exp(-200) = 0.0)
        last = module.model.router.mlp[2]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([200.0, 0.0, -200.0, -300.0]))
    trainer = L.Trainer(
        max_steps=0, logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False
    )
    trainer.strategy.connect(module)
    ckpt = tmp_path / "underflow.ckpt"
    trainer.save_checkpoint(ckpt)
    for fmt in ("gates", "peft"):
        _cli(
            "generate",
            "--ckpt_path",
            str(ckpt),
            "--system_prompt",
            PROMPT,
            "--output",
            str(tmp_path / fmt),
            "--format",
            fmt,
            "--no_cache",
        )
    gates = json.loads((tmp_path / "gates" / META_FILE).read_text())["gates"]["values"]
    assert all(sorted(row, reverse=True)[:2] == [1.0, 0.0] for row in gates)  # one selected gate is exactly 0
    _cli(
        "apply",
        "--gates",
        str(tmp_path / "gates"),
        "--ckpt_path",
        str(ckpt),
        "--output",
        str(tmp_path / "ap"),
        "--format",
        "peft",
    )
    for out in ("peft", "ap"):
        assert json.loads((tmp_path / out / "adapter_config.json").read_text())["r"] == 8  # k·r = 2·4, not 1·4
    a, b = (_tensors(tmp_path / out / "adapter_model.safetensors") for out in ("peft", "ap"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_same_request_twice_costs_one_cloud_pass(ckpt, tmp_path, monkeypatch):
    import loragen.deploy.deployment as deployment
    from loragen.models.components.lora_gen import LoRAGen

    calls = []
    original = LoRAGen.generate
    monkeypatch.setattr(LoRAGen, "generate", lambda self, *a: calls.append(1) or original(self, *a))
    first = generate(ckpt, PROMPT, tmp_path / "one", "gates", out=io.StringIO())
    with monkeypatch.context() as m:
        m.setattr(deployment, "load_module", lambda *a, **k: pytest.fail("a cache hit loaded the cloud model"))
        second = generate(ckpt, PROMPT, tmp_path / "two", "peft", out=io.StringIO())
        (tmp_path / "prompt.txt").write_text(PROMPT + "\n")  # the file's trailing newline is dropped
        _cli(
            "generate",
            "--ckpt_path",
            str(ckpt),
            "--system_prompt_file",
            str(tmp_path / "prompt.txt"),
            "--output",
            str(tmp_path / "file"),
            "--format",
            "gates",
        )
    assert len(calls) == 1 and second["gates"] == first["gates"]
    assert json.loads((tmp_path / "file" / META_FILE).read_text())["system_prompt_sha256"] == sha256_text(PROMPT)
    assert second["report"]["cloud_pass_skipped"] and not first["report"]["cloud_pass_skipped"]
    entry = tmp_path / "cache" / "generated" / sha256_file(ckpt) / f"{sha256_text(PROMPT)}.json"
    assert entry.is_file()  # under $LORAGEN_CACHE/generated, keyed by the two hashes
    entry.write_text("{not json")  # a corrupt entry is a miss, regenerated and rewritten
    third = generate(ckpt, PROMPT, tmp_path / "three", "gates", out=io.StringIO())
    assert len(calls) == 2 and third["gates"] == first["gates"] and json.loads(entry.read_text())


@pytest.mark.parametrize("fmt", ["merged", "gates", "gguf-lora"])
def test_a_failure_midway_leaves_no_output_and_keeps_a_previous_one(dep, tmp_path, monkeypatch, fmt):
    import loragen.deploy.generate as gen

    record, _ = dep.gates(PROMPT)
    before = {k: v.clone() for k, v in dep.edge_side.backbone.model.state_dict().items()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(gen, "write_json", broken)
        with pytest.raises(OSError, match="disk full"):
            export(dep, record, tmp_path / "out", fmt)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary directory
    assert all(torch.equal(v, dep.edge_side.backbone.model.state_dict()[k]) for k, v in before.items())
    export(dep, record, tmp_path / "out", "gates")
    previous = (tmp_path / "out" / META_FILE).read_text()
    with monkeypatch.context() as m, pytest.raises(OSError):
        m.setattr(gen, "write_json", broken)
        export(dep, record, tmp_path / "out", fmt, overwrite=True)
    assert (tmp_path / "out" / META_FILE).read_text() == previous and [p.name for p in tmp_path.iterdir()] == ["out"]


def _error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        _cli(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("loragen: error: ") and err.count("\n") == 1
    return err


def test_bad_prompts_outputs_and_checkpoints_fail_with_one_line(ckpt, tmp_path, capsys):
    base = ["generate", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "o"), "--format", "gates"]
    assert "empty" in _error(capsys, *base, "--system_prompt", "  ")
    assert "over the limit of 2046" in _error(capsys, *base, "--system_prompt", "x" * 2100)  # 2048 - 2 meta
    missing = [
        "generate",
        "--ckpt_path",
        str(tmp_path / "nope.ckpt"),
        "--system_prompt",
        PROMPT,
        "--output",
        str(tmp_path / "x"),
    ]
    assert "does not exist" in _error(capsys, *missing)
    assert "cannot read the system prompt file" in _error(capsys, *base, "--system_prompt_file", str(tmp_path / "no"))
    assert "edge_arch" in _error(capsys, *base, "--system_prompt", PROMPT, "--edge", "tiny:gemma")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    busy = [*base[:3], "--output", str(tmp_path / "busy"), "--system_prompt", PROMPT]
    assert "not empty" in _error(capsys, *busy)
    assert "not a loragen output" in _error(capsys, *busy, "--overwrite")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    _cli(*base, "--system_prompt", PROMPT)
    _cli(*base, "--system_prompt", PROMPT, "--overwrite")  # a previous loragen output may be replaced


def test_gates_from_another_checkpoint_or_pair_or_edited_are_refused(ckpt, tmp_path, capsys):
    other_pair = _save_checkpoint(tmp_path / "pair.ckpt", "tiny:llama", "tiny:gemma")
    state = torch.load(ckpt, weights_only=False)
    state["state_dict"]["model.pool.B.self_attn__q_proj"] += 1.0
    other_weights = tmp_path / "weights.ckpt"
    torch.save(state, other_weights)
    for source in (other_pair, other_weights):
        _cli(
            "generate",
            "--ckpt_path",
            str(source),
            "--system_prompt",
            PROMPT,
            "--output",
            str(tmp_path / source.stem),
            "--format",
            "gates",
            "--no_cache",
        )
    apply = ["apply", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "ap")]
    err = _error(capsys, *apply, "--gates", str(tmp_path / "pair"))
    assert "another cloud/edge pair" in err and "edge: stored 'tiny:gemma'" in err
    assert "another checkpoint" in _error(capsys, *apply, "--gates", str(tmp_path / "weights"))
    meta = json.loads((tmp_path / "weights" / META_FILE).read_text())
    meta["gates"]["values"][0][0] += 0.25
    (tmp_path / "edited.json").write_text(json.dumps(meta))
    assert "sha256" in _error(capsys, *apply, "--gates", str(tmp_path / "edited.json"))
    assert not (tmp_path / "ap").exists()


def test_chat_answers_without_the_system_prompt_and_compares(ckpt, dep, tmp_path):
    from loragen.deploy import chat

    tok = load_backbone("tiny:llama").tokenizer
    out = _cli(
        "chat",
        "--ckpt_path",
        str(ckpt),
        "--system_prompt",
        PROMPT,
        "--compare",
        "--max_new_tokens",
        "6",
        stdin="hello there\n\nWhat is 12 + 30?\n",
    )
    assert out.count("> ") == 2 and out.count("[specialized]") == 2 and out.count("[base + system prompt]") == 2
    assert out.count(" new tokens in ") == 4  # tokens and latency for every answer
    assert f"prompt {len(tok(INPUT)['input_ids'])} tokens" in out  # the specialized model never sees the prompt
    assert f"prompt {len(tok(PROMPT + chr(10) * 2 + INPUT)['input_ids'])} tokens" in out
    model = dep.module.model
    system = torch.tensor([model.cloud_backbone.tokenizer(PROMPT)["input_ids"]])
    (lora,) = model.generate(system, torch.ones_like(system))
    with model.edge_lora.merged_lora(lora), torch.no_grad():
        ids = model.edge.generate(
            input_ids=_ids(INPUT), do_sample=False, max_new_tokens=6, pad_token_id=tok.pad_token_id
        )
    expected = tok.decode(ids[0, _ids(INPUT).shape[1] :], skip_special_tokens=True)
    assert f"[specialized] {expected}" in out  # the streamed answer is the merged model's greedy answer
    _cli("generate", "--ckpt_path", str(ckpt), "--system_prompt", PROMPT, "--output", str(tmp_path / "ad"))
    turns = chat.chat(chat.from_adapter(tmp_path / "ad"), io.StringIO(INPUT + "\n"), io.StringIO(), max_new_tokens=6)
    assert len(turns) == 1 and turns[0]["specialized"]["prompt_tokens"] == _ids(INPUT).shape[1]
    adapter_out = _cli("chat", "--adapter", str(tmp_path / "ad"), "--max_new_tokens", "6", stdin=INPUT + "\n")
    assert f"[specialized] {expected}" in adapter_out  # the PEFT adapter answers the same


def test_generate_reads_its_options_from_a_config_file_as_fit_does(ckpt, tmp_path, capsys):
    """The deploy subcommands parse like LightningCLI's: --config FILE (YAML), --print_config writes one, and a
    flag given after the file overrides it."""
    config = tmp_path / "generate.yaml"
    config.write_text(
        f"ckpt_path: {ckpt}\nsystem_prompt: {json.dumps(PROMPT)}\noutput: {tmp_path / 'from-file'}\nformat: peft\n"
    )
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--config", str(config), "--format", "gates", "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ckpt_path"] == str(ckpt) and printed["format"] == "gates" and printed["system_prompt"] == PROMPT
    _cli("generate", "--config", str(config), "--format", "gates")
    meta = json.loads((tmp_path / "from-file" / META_FILE).read_text())
    assert meta["format"] == "gates" and meta["system_prompt_sha256"] == sha256_text(PROMPT)
    config.write_text(f"ckpt_path: {ckpt}\noutput: {tmp_path / 'none'}\n")  # no prompt anywhere: refused
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--config", str(config)])
    assert stop.value.code == 2
    assert "give exactly one of --system_prompt or --system_prompt_file" in capsys.readouterr().err
