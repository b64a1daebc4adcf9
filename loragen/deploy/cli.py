"""``loragen generate | apply | chat``: argparse front end (heavy imports only once a command runs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from loragen import LoRAGenError
from loragen.deploy.artifacts import FORMATS
from loragen.deploy.report import DEFAULT_SAMPLE_INPUT

_DESCRIPTIONS = {
    "generate": "Turn a system prompt into a LoRA for the edge model: one cloud pass (or none if the same "
    "checkpoint and prompt are cached), then write a PEFT adapter, a merged Hugging Face model "
    "or a compact gates file. Every output directory holds loragen_meta.json (checkpoint and "
    "system-prompt sha256, gates, report); a report of cloud/merge time, payload sizes, edge "
    "tokens saved and break-even requests is printed.",
    "apply": "Rebuild a PEFT adapter or merged model on the edge side from a gates file (or any `loragen "
    "generate` output directory), or from gates fetched from a `loragen serve` service (--server URL "
    "with the system prompt): no cloud model is loaded. The server's gates are checked (checksum, "
    "prompt hash, pair fingerprint, checkpoint) before use; the result is bit-identical to generating "
    "that format directly.",
    "serve": "Serve a trained generator over HTTP (LitServe): POST /v1/generate {system_prompt, format: "
    "gates|peft} returns the gates (JSON) or a PEFT adapter (zip); GET /v1/model the pair fingerprint, "
    "pool shape and checkpoint sha256; GET /health. Concurrent requests are batched through the cloud; "
    "the gates cache is the one `loragen generate` uses. An API key is required ($LORAGEN_API_KEY or "
    "--api_key_file) unless --insecure-no-auth is given; clients send 'Authorization: Bearer KEY'.",
    "chat": "Talk to the specialized edge model, which answers WITHOUT the system prompt in its context. "
    "Reads lines from the terminal or a pipe until EOF and streams greedy answers. The model is the "
    "checkpoint's edge with the prompt's LoRA merged (--ckpt_path), a PEFT adapter (--adapter), or a GGUF "
    "run in llama.cpp (--gguf, optionally with a --lora adapter).",
}


# groups of options of which exactly one must be given: checked after parsing, so that a --config file can give
# it (argparse's required mutually exclusive groups look at the command line alone)
_ONE_OF: dict[str, list[tuple[str, ...]]] = {
    "generate": [("system_prompt", "system_prompt_file")],
    "apply": [("gates", "server")],
    "chat": [("ckpt_path", "adapter", "gguf")],
}


def _add_prompt(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--system_prompt", metavar="TEXT", help="the task's system prompt")
    group.add_argument(
        "--system_prompt_file",
        metavar="FILE",
        help="read the system prompt from a UTF-8 file (trailing newlines are dropped)",
    )


def _add_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no_cache",
        action="store_true",
        help="neither read nor write the generated-gates cache ($LORAGEN_CACHE/generated)",
    )


def _add_gguf_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gguf_type",
        default="f16",
        choices=["f16", "q8_0", "f32"],
        help="weight type of --format gguf (default f16; norms stay f32); gguf-lora is f16 unless f32 is asked for",
    )


def _add_cloud_states(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cloud_states",
        "--model.init_args.cloud_states",
        dest="cloud_states",
        metavar="FILE",
        help="states file of `loragen encode`: prompts it holds are read without loading the cloud (another "
        "prompt is refused, unless the cloud is also the edge)",
    )


def build_parser(command: str) -> argparse.ArgumentParser:
    """The subcommand's parser (jsonargparse, as LightningCLI's: ``--config FILE`` reads these options from YAML,
    ``--print_config`` writes the resolved ones)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=f"loragen {command}", description=_DESCRIPTIONS[command], exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of these options (see --print_config)")
    if command == "generate":
        parser.add_argument("--ckpt_path", required=True, metavar="CKPT", help="checkpoint written by loragen fit")
        _add_prompt(parser)
        parser.add_argument("--output", required=True, metavar="DIR", help="output directory (written atomically)")
        parser.add_argument(
            "--format",
            default="peft",
            choices=list(FORMATS),
            help="peft: PEFT LoRA adapter (rank k*r); merged: HF model with the LoRA merged; "
            "gates: L x n gates + fingerprint + checkpoint hash (a few kB, see `apply`); "
            "gguf: the specialized edge as one llama.cpp GGUF file; gguf-lora: the LoRA as a "
            "llama.cpp adapter for the base edge GGUF",
        )
        _add_gguf_type(parser)
        parser.add_argument("--cloud", metavar="SRC", help="cloud model source (default: the checkpoint's)")
        parser.add_argument("--edge", metavar="SRC", help="edge model source (default: the checkpoint's)")
        _add_cloud_states(parser)
        parser.add_argument("--overwrite", action="store_true", help="replace an existing loragen output directory")
        parser.add_argument(
            "--sample_input",
            default=DEFAULT_SAMPLE_INPUT,
            metavar="TEXT",
            help="user input used to time the edge forward for the report",
        )
        _add_cache(parser)
    elif command == "apply":
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--gates", metavar="FILE", help="gates file or output directory of `loragen generate`")
        source.add_argument(
            "--server",
            metavar="URL",
            help="fetch the gates for the system prompt from `loragen serve` at URL (e.g. http://127.0.0.1:8000)",
        )
        _add_prompt(parser)
        parser.add_argument(
            "--api_key_file", metavar="FILE", help="the service's API key (first line; default: $LORAGEN_API_KEY)"
        )
        parser.add_argument(
            "--ckpt_path",
            required=True,
            metavar="CKPT",
            help="the checkpoint the gates came from (its expert pool builds the LoRA)",
        )
        parser.add_argument("--output", required=True, metavar="DIR", help="output directory (written atomically)")
        parser.add_argument(
            "--format",
            default="peft",
            choices=list(FORMATS),
            help="what to write, as for `generate` (gates: keep the fetched gates record, a few kB)",
        )
        _add_gguf_type(parser)
        parser.add_argument("--edge", metavar="SRC", help="edge model source (default: the checkpoint's)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing loragen output directory")
    elif command == "serve":
        parser.add_argument("--ckpt_path", required=True, metavar="CKPT", help="checkpoint written by loragen fit")
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            choices=["127.0.0.1", "0.0.0.0", "::"],
            help="interface to bind (default 127.0.0.1: this machine only)",
        )
        parser.add_argument("--port", type=int, default=8000, help="TCP port (1024-65535, default 8000)")
        auth = parser.add_mutually_exclusive_group()
        auth.add_argument(
            "--api_key_file", metavar="FILE", help="file whose first line is the API key (default: $LORAGEN_API_KEY)"
        )
        auth.add_argument(
            "--insecure-no-auth",
            dest="insecure_no_auth",
            action="store_true",
            help="serve without an API key (local use only)",
        )
        parser.add_argument(
            "--max_batch_size",
            type=int,
            default=8,
            help="requests batched through the cloud together (default 8; 1 = no batching)",
        )
        parser.add_argument(
            "--batch_timeout", type=float, default=0.01, help="seconds to wait for a batch to fill (default 0.01)"
        )
        parser.add_argument(
            "--max_body_bytes", type=int, default=1 << 20, help="larger request bodies get 413 (default 1 MiB)"
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=120.0,
            help="seconds a request may wait for the worker before it gets 504 (default 120)",
        )
        parser.add_argument("--cloud", metavar="SRC", help="cloud model source (default: the checkpoint's)")
        parser.add_argument("--edge", metavar="SRC", help="edge model source (default: the checkpoint's)")
        _add_cloud_states(parser)
        parser.add_argument(
            "--log_level",
            default="warning",
            choices=["debug", "info", "warning", "error"],
            help="server log level (default warning; keys are never logged)",
        )
        parser.add_argument(
            "--cache_dir",
            metavar="DIR",
            help="gates cache directory (default: $LORAGEN_CACHE/generated, shared with generate)",
        )
        _add_cache(parser)
    else:
        source = parser.add_mutually_exclusive_group()
        source.add_argument(
            "--ckpt_path",
            metavar="CKPT",
            help="checkpoint: generate (or reuse cached) gates for --system_prompt and merge them into the edge model",
        )
        source.add_argument("--adapter", metavar="DIR", help="PEFT adapter from `loragen generate --format peft`")
        source.add_argument(
            "--gguf",
            metavar="FILE",
            help="a GGUF from `loragen generate --format gguf`, run in "
            "llama.cpp (llama-cpp-python); with --lora, the base edge GGUF",
        )
        parser.add_argument("--lora", metavar="FILE", help="with --gguf: a `--format gguf-lora` adapter for that base")
        _add_prompt(parser)
        parser.add_argument("--cloud", metavar="SRC", help="cloud model source (with --ckpt_path)")
        parser.add_argument(
            "--edge", metavar="SRC", help="edge model source (default: the checkpoint's, or the adapter's metadata)"
        )
        parser.add_argument(
            "--compare", action="store_true", help="also answer with the base edge model given the full system prompt"
        )
        parser.add_argument("--max_new_tokens", type=int, default=64, help="answer length limit (default 64)")
        _add_cache(parser)
    return parser


def _system_prompt(args: argparse.Namespace) -> str | None:
    if args.system_prompt_file is None:
        return args.system_prompt
    path = Path(args.system_prompt_file).expanduser()
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise LoRAGenError(
            f"cannot read the system prompt file {path} ({err.__class__.__name__}): give an existing UTF-8 text file"
        ) from err


def _run(command: str, args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    if command == "generate":
        from loragen.deploy.deployment import check_system_prompt
        from loragen.deploy.generate import generate

        # alike in shape to the serve(...) call below, release.py's export_release(...) and serve.py's
        # Deployment(...): each passes its own command's options; kept apart
        generate(
            args.ckpt_path,
            check_system_prompt(_system_prompt(args)),
            args.output,
            args.format,
            cloud=args.cloud,
            edge=args.edge,
            cloud_states=args.cloud_states,
            overwrite=args.overwrite,
            sample_input=args.sample_input,
            cache=not args.no_cache,
            out=stdout,
            gguf_type=args.gguf_type,
        )
    elif command == "apply":
        from loragen.deploy.generate import apply, apply_from_server

        if args.server:
            prompt = _system_prompt(args)
            if prompt is None:
                raise LoRAGenError(
                    "--server needs the system prompt to fetch gates for: give --system_prompt or --system_prompt_file"
                )
            from loragen.deploy.client import read_api_key

            apply_from_server(
                args.server,
                prompt,
                args.ckpt_path,
                args.output,
                args.format,
                edge=args.edge,
                overwrite=args.overwrite,
                api_key=read_api_key(args.api_key_file),
                out=stdout,
                gguf_type=args.gguf_type,
            )
        else:
            if args.system_prompt is not None or args.system_prompt_file is not None:
                raise LoRAGenError(
                    "a gates file already fixes the system prompt: drop --system_prompt(_file), or "
                    "use --server URL to fetch gates for a prompt"
                )
            apply(
                args.gates,
                args.ckpt_path,
                args.output,
                args.format,
                edge=args.edge,
                overwrite=args.overwrite,
                out=stdout,
                gguf_type=args.gguf_type,
            )
    elif command == "serve":
        for name, low in (("max_batch_size", 1), ("max_body_bytes", 1), ("timeout", 0)):
            if getattr(args, name) < low or (name == "timeout" and args.timeout == 0):
                raise LoRAGenError(
                    f"--{name} must be {'> 0' if name == 'timeout' else f'>= {low}'}, got {getattr(args, name)}"
                )
        if not 1024 <= args.port <= 65535:
            raise LoRAGenError(f"--port must be between 1024 and 65535, got {args.port}")
        if args.batch_timeout < 0:
            raise LoRAGenError(f"--batch_timeout must be >= 0, got {args.batch_timeout}")
        from loragen.deploy.serve import serve

        serve(
            args.ckpt_path,
            host=args.host,
            port=args.port,
            insecure_no_auth=args.insecure_no_auth,
            api_key_file=args.api_key_file,
            log_level=args.log_level,
            cloud=args.cloud,
            edge=args.edge,
            cloud_states=args.cloud_states,
            cache=not args.no_cache,
            cache_dir=args.cache_dir,
            max_batch_size=args.max_batch_size,
            batch_timeout=args.batch_timeout,
            max_body_bytes=args.max_body_bytes,
            timeout=args.timeout,
        )
    else:
        from loragen.deploy import chat

        if args.max_new_tokens < 1:
            raise LoRAGenError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
        prompt = _system_prompt(args)
        if args.lora and not args.gguf:
            raise LoRAGenError("--lora is a llama.cpp adapter: give its base edge GGUF with --gguf")
        if args.gguf:
            if args.compare or prompt is not None:
                raise LoRAGenError(
                    "a GGUF already fixes the system prompt: drop --system_prompt(_file) and "
                    "--compare, or chat with --ckpt_path to compare with the prompted base model"
                )
            model = chat.from_gguf(args.gguf, args.lora)
        elif args.adapter:
            model = chat.from_adapter(args.adapter, args.edge, prompt)
        else:
            from loragen.deploy.deployment import Deployment, check_system_prompt

            prompt = check_system_prompt(prompt)
            deployment = Deployment(args.ckpt_path, cloud=args.cloud, edge=args.edge, cache=not args.no_cache)
            model = chat.from_deployment(deployment, prompt)
        chat.chat(model, stdin, stdout, max_new_tokens=args.max_new_tokens, compare=args.compare)


def main(argv: list[str], *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """Entry point; ``argv[0]`` is the subcommand. User errors exit 2 with one ``loragen: error:`` line."""
    command, rest = argv[0], argv[1:]
    if command not in _DESCRIPTIONS:
        raise SystemExit(f"loragen: error: unknown deployment command {command!r}: use generate, apply, chat or serve")
    parser = build_parser(command)
    args = parser.parse_args(rest)
    for names in _ONE_OF.get(command, []):
        given = [n for n in names if getattr(args, n, None) is not None]
        if len(given) != 1:
            flags = " or ".join(f"--{n}" for n in names)
            parser.error(f"give exactly one of {flags} (got {len(given)})")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        _run(command, args, stdin or sys.stdin, stdout or sys.stdout)
    except LoRAGenError as err:
        message = " ".join(str(err).split("\n"))
        print(f"loragen: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
