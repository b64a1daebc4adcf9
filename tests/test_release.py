"""Released generators (weights-only safetensors + release.json) work wherever a checkpoint does."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loragen import LoRAGenError
from loragen.checkpoint import resolve_checkpoint
from loragen.deploy.cli import main as deploy_main
from loragen.deploy.deployment import Deployment
from loragen.release import META, WEIGHTS, export_release, known_releases
from tests.conftest import PROMPT, _save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAGEN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _save_checkpoint(tmp_path_factory.mktemp("release") / "gen.ckpt", "tiny:qwen2", "tiny:llama")


def test_a_float32_release_reproduces_the_checkpoint_bit_for_bit(ckpt, tmp_path):
    meta = export_release(
        ckpt,
        tmp_path / "rel",
        name="tiny-gen",
        command="loragen fit ...",
        dtype="float32",
        licences=["quickstart data: CC BY-SA"],
    )
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == [WEIGHTS, META]
    assert meta["fingerprint"]["edge"] == "tiny:llama" and meta["data_licences"] == ["quickstart data: CC BY-SA"]
    resolved = resolve_checkpoint(tmp_path / "rel")
    assert resolved.is_file() and resolve_checkpoint(tmp_path / "rel") == resolved  # built once
    original, released = Deployment(ckpt, cache=False), Deployment(resolved, cache=False)
    assert torch.equal(original.gates(PROMPT)[0].gates, released.gates(PROMPT)[0].gates)
    pool, released_pool = original.edge_side.pool.state_dict(), released.edge_side.pool.state_dict()
    assert pool.keys() == released_pool.keys() and all(torch.equal(pool[k], released_pool[k]) for k in pool)


def test_a_float16_release_is_half_the_size_and_close(ckpt, tmp_path):
    export_release(ckpt, tmp_path / "rel16", name="tiny-gen", command="c")
    export_release(ckpt, tmp_path / "rel32", name="tiny-gen", command="c", dtype="float32")
    small, full = ((tmp_path / d / WEIGHTS).stat().st_size for d in ("rel16", "rel32"))
    assert small < 0.55 * full
    gates16 = Deployment(resolve_checkpoint(tmp_path / "rel16"), cache=False).gates(PROMPT)[0].gates
    gates32 = Deployment(ckpt, cache=False).gates(PROMPT)[0].gates
    assert torch.equal(gates16 > 0, gates32 > 0)  # the same experts
    torch.testing.assert_close(gates16, gates32, atol=2e-3, rtol=0)


@pytest.mark.heavy
def test_commands_take_a_release_as_their_checkpoint(ckpt, tmp_path):
    export_release(ckpt, tmp_path / "rel", name="tiny-gen", command="c", dtype="float32")
    out = io.StringIO()
    deploy_main(
        [
            "generate",
            "--ckpt_path",
            str(tmp_path / "rel"),
            "--system_prompt",
            PROMPT,
            "--output",
            str(tmp_path / "gates"),
            "--format",
            "gates",
        ],
        stdout=out,
    )
    meta = json.loads((tmp_path / "gates" / "loragen_meta.json").read_text())
    assert meta["checkpoint"].endswith(".ckpt")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loragen.cli",
            "test",
            "--config",
            "configs/tiny.yaml",
            "--ckpt_path",
            str(tmp_path / "rel"),
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "run"),
            "--verbose",
            "false",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "LORAGEN_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = (tmp_path / "run").rglob("results.json")
    assert json.loads(results.read_text())["items"] > 0


def test_a_tampered_or_unknown_release_is_one_line(ckpt, tmp_path):
    export_release(ckpt, tmp_path / "rel", name="tiny-gen", command="c")
    data = bytearray((tmp_path / "rel" / WEIGHTS).read_bytes())
    data[-1] ^= 1
    (tmp_path / "rel" / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(LoRAGenError, match="does not match the sha256"):
        resolve_checkpoint(tmp_path / "rel")
    with pytest.raises(LoRAGenError, match="unknown released generator 'nosuch'"):
        resolve_checkpoint("bundled:nosuch")
    with pytest.raises(LoRAGenError, match="bundled base model, not a trained generator"):
        resolve_checkpoint("bundled:smollm2-135m-instruct")
    assert isinstance(known_releases(), dict)


def test_loragen_release_reads_its_options_from_a_config_file_and_writes_the_directory(ckpt, tmp_path, capsys):
    import yaml

    from loragen.release import main

    options = tmp_path / "release.yaml"
    out = tmp_path / "rel"
    options.write_text(
        yaml.safe_dump({"ckpt_path": str(ckpt), "out": str(out), "name": "tiny-gen", "command": "loragen fit ..."})
    )
    main(["--config", str(options), "--dtype", "float32", "--licence", "quickstart data: CC BY-SA"])
    printed = capsys.readouterr().out
    meta = json.loads((out / META).read_text())
    assert meta["name"] == "tiny-gen" and meta["dtype"] == "float32" and meta["training_command"] == "loragen fit ..."
    assert meta["data_licences"] == ["quickstart data: CC BY-SA"]
    assert printed.startswith(f"wrote {out}: ") and meta["weights_sha256"][:16] in printed


def test_keep_previous_moves_the_replaced_release_to_a_versioned_name_that_still_loads(ckpt, tmp_path):
    other = _save_checkpoint(tmp_path / "other.ckpt", "tiny:llama", "tiny:llama")  # another checkpoint file
    out = tmp_path / "tiny-gen"
    first = export_release(ckpt, out, name="tiny-gen", command="first", dtype="float32")
    first_weights = (out / WEIGHTS).read_bytes()
    export_release(other, out, name="tiny-gen", command="second", keep_previous=True)
    export_release(ckpt, out, name="tiny-gen", command="third", keep_previous=True)
    v1, v2 = (json.loads((tmp_path / f"tiny-gen-v{n}" / META).read_text()) for n in (1, 2))
    assert (v1["name"], v1["training_command"], v1["dtype"]) == ("tiny-gen-v1", "first", "float32")
    assert (v2["name"], v2["training_command"]) == ("tiny-gen-v2", "second")
    assert json.loads((out / META).read_text())["training_command"] == "third"
    assert (tmp_path / "tiny-gen-v1" / WEIGHTS).read_bytes() == first_weights
    assert v1["weights_sha256"] == first["weights_sha256"]
    released = Deployment(resolve_checkpoint(tmp_path / "tiny-gen-v1"), cache=False)  # sha256 checked on load
    assert torch.equal(released.gates(PROMPT)[0].gates, Deployment(ckpt, cache=False).gates(PROMPT)[0].gates)
    export_release(other, out, name="tiny-gen", command="fourth")  # without the flag: replaced, no new version
    assert not (tmp_path / "tiny-gen-v3").exists()


def test_keep_previous_keeps_no_copy_when_the_same_checkpoint_is_exported_again(ckpt, tmp_path):
    other = _save_checkpoint(tmp_path / "other.ckpt", "tiny:llama", "tiny:llama")  # another checkpoint file
    out = tmp_path / "tiny-gen"
    export_release(other, out, name="tiny-gen", command="old")
    export_release(ckpt, out, name="tiny-gen", command="new", keep_previous=True)
    export_release(ckpt, out, name="tiny-gen", command="new again", keep_previous=True)  # e.g. a re-run script
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tiny-gen")) == ["tiny-gen", "tiny-gen-v1"]
    assert json.loads((tmp_path / "tiny-gen-v1" / META).read_text())["training_command"] == "old"


def test_keep_previous_refuses_a_directory_that_is_not_a_release_and_names_copies_by_directory(ckpt, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(LoRAGenError, match="holds no readable release to keep: move it away, or drop --keep_previous"):
        export_release(ckpt, tmp_path / "notes", name="tiny-gen", command="c", keep_previous=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"  # nothing lost
    out = tmp_path / "shipped"  # the directory's name, not release.json's, is what bundled: finds
    export_release(ckpt, out, name="tiny-gen", command="old", dtype="float32")
    export_release(ckpt, out, name="tiny-gen", command="new", keep_previous=True)  # float16: other weights
    assert json.loads((tmp_path / "shipped-v1" / META).read_text())["name"] == "shipped-v1"
    export_release(ckpt, out, name="tiny-gen", command="again", keep_previous=True)  # the same weights again
    assert not (tmp_path / "shipped-v2").exists()
    import shutil

    shutil.copytree(out, tmp_path / "shipped-v2")  # an export stopped after its copy, before its swap
    export_release(ckpt, out, name="tiny-gen", command="newer", dtype="float32", keep_previous=True)
    assert not (tmp_path / "shipped-v3").exists()  # those weights are kept already: no second copy
    assert json.loads((out / META).read_text())["training_command"] == "newer"


@pytest.mark.slow
def test_the_quickstart_tests_the_shipped_release_with_its_own_pool(tmp_path):
    """Part 1 of scripts/quickstart.sh: the release is tested on the quickstart's items with the quickstart's
    config, whose pool (4 experts of rank 4) the release's (8 of rank 8) replaces; each task by its harness metric."""
    name = "smollm2-135m-lora-gen"
    if name not in known_releases():
        pytest.skip("the released generator is not installed")
    release = json.loads((known_releases()[name] / META).read_text())
    done = subprocess.run(
        [sys.executable, "-m", "loragen.cli", "test", "--config", "configs/quickstart.yaml",
         "--ckpt_path", f"bundled:{name}", "--data.init_args.limit_per_task", "2",
         "--trainer.default_root_dir", str(tmp_path / "release"), "--verbose", "false"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", "LORAGEN_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "release" / "results.json").read_text())
    assert results["trained_steps"] == release["trained_steps"]
    assert results["task_metrics"]["boolq"] == "acc" and results["task_metrics"]["arc_easy"] == "acc_norm"
    assert {row["key"] for row in results["rows"]} >= {"loragen", "rotated", "generic", "prompted", "zero_shot"}
    assert results["items"] == 8
    from safetensors import safe_open

    with safe_open(str(known_releases()[name] / WEIGHTS), "pt") as weights:
        shipped = sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())  # noqa: SIM118
    # the release's pool was built (the config's 4 experts of rank 4 would hold about a quarter of it); the
    # shipped weights also hold the frozen meta tokens, one per edge layer
    assert shipped * 0.99 < results["trainable_params"] <= shipped
