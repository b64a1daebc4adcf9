"""Cloud states computed apart from training (``loragen encode``, ``model.init_args.cloud_states``): a run with the
file equals the run with the cloud, never loads or runs the cloud, and a stale or foreign file is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loragen import LoRAGenError
from loragen.cli import run
from loragen.models.components.cloud_states import CloudStates, StaleStatesError, prompt_sha
from loragen.models.config import GENERIC_PROMPT
from tests.conftest import PROMPT

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _args(root: Path, *extra: str) -> list[str]:
    return ["--config", TINY, "--trainer.logger", "false", "--trainer.default_root_dir", str(root), *extra]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    """The tiny config's states (cloud tiny:qwen2, edge tiny:llama), with one extra prompt from a prompts file."""
    root = tmp_path_factory.mktemp("encode")
    prompts = root / "prompts.jsonl"
    prompts.write_text(json.dumps({"system": PROMPT}) + "\n" + json.dumps("Answer in French.") + "\n")
    out = root / "states.safetensors"
    run(["encode", *_args(root), "--out", str(out), "--prompts", str(prompts)])
    return out


def _fit(root: Path, *extra: str):
    cli = run(["fit", *_args(root, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0"), *extra])
    return cli


def test_encode_covers_the_data_the_method_and_the_prompts_file(encoded):
    states = CloudStates.load(encoded)
    texts = set(states.prompts.values())
    assert any(PROMPT in t for t in texts) and any("Answer in French." in t for t in texts)
    assert any(GENERIC_PROMPT in t for t in texts)  # the sensitivity rows' task-free probe
    assert len(states.states) >= 6  # the shipped quickstart tasks' prompts (4), the generic probe and the file's 2
    assert states.cloud["cloud"] == "tiny:qwen2" and states.cloud["cloud_arch"] == "qwen2"
    shapes = {tuple(s.shape) for s in states.states.values()}
    assert shapes == {tuple(states.meta_tokens.shape)}  # (edge layers, cloud width) for every prompt


def test_fit_with_the_states_file_equals_fit_with_the_cloud_and_never_loads_it(encoded, tmp_path):
    with_cloud = _fit(tmp_path / "cloud")
    with_file = _fit(tmp_path / "file", "--model.init_args.cloud_states", str(encoded))
    generator = with_file.model.model.generator
    assert generator.cloud is None and generator.cloud_passes == 0  # the cloud was never loaded, never ran
    assert with_cloud.model.model.generator.cloud_passes > 0
    loss = [cli.trainer.callback_metrics["train/loss"].item() for cli in (with_cloud, with_file)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-6, abs=1e-7)
    trained = [cli.model.model.trainable_state_dict() for cli in (with_cloud, with_file)]
    assert trained[0].keys() == trained[1].keys()
    for name in trained[0]:
        torch.testing.assert_close(trained[1][name], trained[0][name], rtol=1e-6, atol=1e-7, msg=name)
    # the same gates, hence the same merged edge weights, for a prompt of the file
    tok = with_cloud.model.model.cloud_backbone.tokenizer
    ids = torch.tensor([tok(PROMPT, add_special_tokens=True)["input_ids"]])
    loras = [cli.model.model.generate(ids, torch.ones_like(ids))[0] for cli in (with_cloud, with_file)]
    torch.testing.assert_close(loras[1].gates, loras[0].gates, rtol=1e-6, atol=1e-7)
    for path in loras[0].factors:
        torch.testing.assert_close(loras[1].delta_weight(path), loras[0].delta_weight(path), rtol=1e-5, atol=1e-7)


def test_a_prompt_the_file_lacks_is_named_in_one_line_and_the_shared_cloud_reads_it(encoded, tmp_path):
    states = CloudStates.load(encoded)
    sha = next(s for s, text in states.prompts.items() if PROMPT in text)
    del states.states[sha]
    partial = states.save(tmp_path / "partial.safetensors")
    with_file = _fit(tmp_path / "no-cloud", "--model.init_args.cloud_states", str(partial))
    tok = with_file.model.model.cloud_backbone.tokenizer
    ids = torch.tensor([tok(PROMPT, add_special_tokens=True)["input_ids"]])
    with pytest.raises(LoRAGenError, match=r"hold no states for the system prompt .*careful math tutor"):
        with_file.model.model.generate(ids, torch.ones_like(ids))


def test_the_cloud_also_the_edge_reads_what_the_file_lacks(tmp_path):
    shared = ("--model.init_args.cloud", "tiny:llama")  # cloud == edge: the one model is loaded anyway
    out = tmp_path / "shared.safetensors"
    run(["encode", *_args(tmp_path, *shared), "--out", str(out)])
    cli = _fit(tmp_path / "fit", *shared, "--model.init_args.cloud_states", str(out))
    generator = cli.model.model.generator
    assert generator.cloud is not None and generator.cloud_passes == 0  # every training prompt from the file
    tok = cli.model.model.cloud_backbone.tokenizer
    ids = torch.tensor([tok(PROMPT, add_special_tokens=True)["input_ids"]])
    cli.model.model.generate(ids, torch.ones_like(ids))  # not in the file: the cloud reads it
    assert generator.cloud_passes == 1


def test_a_file_for_another_cloud_is_refused_in_one_line(encoded, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _fit(tmp_path, "--model.init_args.cloud", "tiny:gemma", "--model.init_args.cloud_states", str(encoded))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "computed for another cloud" in err and "tiny:qwen2" in err and "tiny:gemma" in err


def test_a_checkpoint_with_other_meta_tokens_is_refused_in_one_line(encoded, tmp_path, capsys):
    _fit(tmp_path / "seed1", "--model.init_args.seed", "1")  # seed 1: other meta tokens than the file's (seed 0)
    ckpt = tmp_path / "seed1" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit):
        run(["test", *_args(tmp_path / "t"), "--ckpt_path", str(ckpt), "--model.init_args.cloud_states", str(encoded)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "computed with other meta tokens" in err and "loragen encode" in err
    states = CloudStates.load(encoded)
    with pytest.raises(StaleStatesError, match="other meta tokens"):  # the check itself, on the tensors
        states.check_meta_tokens(states.meta_tokens + 1e-3, "a test")


@pytest.mark.parametrize(
    "flag, message",
    [
        (("--model.init_args.train_meta_tokens", "true"), "frozen cloud side"),
        (("--model.init_args.cloud_lora_rank", "2"), "frozen cloud side"),
    ],
)
def test_a_trained_cloud_side_refuses_states(encoded, tmp_path, capsys, flag, message):
    with pytest.raises(SystemExit):
        _fit(tmp_path, *flag, "--model.init_args.cloud_states", str(encoded))
    assert message in capsys.readouterr().err


def test_a_file_that_is_not_a_states_file_is_refused_in_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not safetensors at all" * 10)
    with pytest.raises(SystemExit):
        _fit(tmp_path / "run", "--model.init_args.cloud_states", str(junk))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is not a loragen cloud states file" in err and "loragen encode" in err
    with pytest.raises(SystemExit):
        _fit(tmp_path / "run2", "--model.init_args.cloud_states", str(tmp_path / "missing.safetensors"))
    assert "does not exist" in capsys.readouterr().err


def test_keys_are_the_sha256_of_the_token_ids():
    assert prompt_sha([1, 2, 3]) == prompt_sha(torch.tensor([1, 2, 3]))
    assert prompt_sha([1, 2, 3]) != prompt_sha([1, 2, 4])
    assert len(prompt_sha([7])) == 64


def test_generate_with_the_states_file_writes_the_adapter_the_cloud_would(encoded, tmp_path, capsys):
    from loragen.deploy.cli import main as deploy_main

    _fit(tmp_path / "fit")
    ckpt = str(tmp_path / "fit" / "checkpoints" / "last.ckpt")
    common = ["--ckpt_path", ckpt, "--format", "peft", "--no_cache"]
    deploy_main(["generate", *common, "--system_prompt", PROMPT, "--output", str(tmp_path / "cloud")])
    deploy_main(
        ["generate", *common, "--system_prompt", PROMPT, "--output", str(tmp_path / "file")]
        + ["--model.init_args.cloud_states", str(encoded)]
    )
    from safetensors.torch import load_file

    adapters = [load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("cloud", "file")]
    assert adapters[0].keys() == adapters[1].keys()
    for name in adapters[0]:
        torch.testing.assert_close(adapters[1][name], adapters[0][name], rtol=1e-6, atol=1e-7, msg=name)
    with pytest.raises(SystemExit):  # a prompt the file lacks, and no cloud to read it
        deploy_main(
            ["generate", *common, "--system_prompt", "Reply in haiku.", "--output", str(tmp_path / "other")]
            + ["--cloud_states", str(encoded)]
        )
    assert "hold no states for the system prompt 'Reply in haiku." in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # nothing half-written


@pytest.mark.heavy
def test_encode_on_two_ddp_processes_writes_the_states_of_one(encoded, tmp_path):
    """Each rank encodes its shard of the prompts; rank 0 gathers them into the one file."""
    from tests.conftest import ddp_cpu_flags, finish_loragen, start_loragen

    out = tmp_path / "ddp.safetensors"
    prompts = Path(CloudStates.load(encoded).path).parent / "prompts.jsonl"
    args = ["encode", *_args(tmp_path), *ddp_cpu_flags(2), "--out", str(out), "--prompts", str(prompts)]
    log = finish_loragen(start_loragen(args + ["--batch_size", "2"], tmp_path), "loragen encode on 2 processes")
    assert "Starting with 2 processes" in log  # really two ranks, not a silent fallback to one
    one, two = CloudStates.load(encoded), CloudStates.load(out)
    assert set(two.states) == set(one.states) and two.prompts == one.prompts
    for sha, state in one.states.items():
        torch.testing.assert_close(two.states[sha], state, rtol=1e-5, atol=1e-6)
    assert two.meta_sha == one.meta_sha
