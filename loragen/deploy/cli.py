"""``loragen generate | apply | chat``: argparse front end (heavy imports only once a command runs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from loragen import LoRAGenError
from loragen.deploy.report import DEFAULT_SAMPLE_INPUT

_DESCRIPTIONS = {
    "generate": "Turn a system prompt into a LoRA for the edge model: one cloud pass (or none if the same "
                "checkpoint and prompt are cached), then write a PEFT adapter, a merged Hugging Face model "
                "or a compact gates file. Every output directory holds loragen_meta.json (checkpoint and "
                "system-prompt sha256, gates, report); a report of cloud/merge time, payload sizes, edge "
                "tokens saved and break-even requests is printed.",
    "apply": "Rebuild a PEFT adapter or merged model from a gates file (or any `loragen generate` output "
             "directory) on the edge side: no cloud model is loaded. The result is bit-identical to "
             "generating that format directly.",
    "chat": "Talk to the specialized edge model, which answers WITHOUT the system prompt in its context. "
            "Reads lines from the terminal or a pipe until EOF and streams greedy answers.",
}


def _add_prompt(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--system_prompt", metavar="TEXT", help="the task's system prompt")
    group.add_argument("--system_prompt_file", metavar="FILE",
                       help="read the system prompt from a UTF-8 file (trailing newlines are dropped)")


def _add_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no_cache", action="store_true",
                        help="neither read nor write the generated-gates cache ($LORAGEN_CACHE/generated)")


def build_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"loragen {command}", description=_DESCRIPTIONS[command])
    if command == "generate":
        parser.add_argument("--ckpt_path", required=True, metavar="CKPT", help="checkpoint written by loragen fit")
        _add_prompt(parser, required=True)
        parser.add_argument("--output", required=True, metavar="DIR", help="output directory (written atomically)")
        parser.add_argument("--format", default="peft", choices=["peft", "merged", "gates"],
                            help="peft: PEFT LoRA adapter (rank k*r); merged: HF model with the LoRA merged; "
                                 "gates: L x n gates + fingerprint + checkpoint hash (a few kB, see `apply`)")
        parser.add_argument("--cloud", metavar="SRC", help="cloud model source (default: the checkpoint's)")
        parser.add_argument("--edge", metavar="SRC", help="edge model source (default: the checkpoint's)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing loragen output directory")
        parser.add_argument("--sample_input", default=DEFAULT_SAMPLE_INPUT, metavar="TEXT",
                            help="user input used to time the edge forward for the report")
        _add_cache(parser)
    elif command == "apply":
        parser.add_argument("--gates", required=True, metavar="FILE",
                            help="gates file or output directory of `loragen generate`")
        parser.add_argument("--ckpt_path", required=True, metavar="CKPT", help="the checkpoint the gates came from")
        parser.add_argument("--output", required=True, metavar="DIR", help="output directory (written atomically)")
        parser.add_argument("--format", default="peft", choices=["peft", "merged"], help="what to write")
        parser.add_argument("--edge", metavar="SRC", help="edge model source (default: the checkpoint's)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing loragen output directory")
    else:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--ckpt_path", metavar="CKPT", help="checkpoint: generate (or reuse cached) gates "
                            "for --system_prompt and merge them into the edge model")
        source.add_argument("--adapter", metavar="DIR", help="PEFT adapter from `loragen generate --format peft`")
        _add_prompt(parser, required=False)
        parser.add_argument("--cloud", metavar="SRC", help="cloud model source (with --ckpt_path)")
        parser.add_argument("--edge", metavar="SRC",
                            help="edge model source (default: the checkpoint's, or the adapter's metadata)")
        parser.add_argument("--compare", action="store_true",
                            help="also answer with the base edge model given the full system prompt")
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
        raise LoRAGenError(f"cannot read the system prompt file {path} ({err.__class__.__name__}): "
                           "give an existing UTF-8 text file") from err


def _run(command: str, args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    if command == "generate":
        from loragen.deploy.generate import generate

        generate(args.ckpt_path, _system_prompt(args), args.output, args.format, cloud=args.cloud, edge=args.edge,
                 overwrite=args.overwrite, sample_input=args.sample_input, cache=not args.no_cache, out=stdout)
    elif command == "apply":
        from loragen.deploy.generate import apply

        apply(args.gates, args.ckpt_path, args.output, args.format, edge=args.edge, overwrite=args.overwrite,
              out=stdout)
    else:
        from loragen.deploy import chat

        if args.max_new_tokens < 1:
            raise LoRAGenError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
        prompt = _system_prompt(args)
        if args.adapter:
            model = chat.from_adapter(args.adapter, args.edge, prompt)
        else:
            from loragen.deploy.deployment import Deployment, check_system_prompt

            check_system_prompt(prompt)
            deployment = Deployment(args.ckpt_path, cloud=args.cloud, edge=args.edge, cache=not args.no_cache)
            model = chat.from_deployment(deployment, prompt)
        chat.chat(model, stdin, stdout, max_new_tokens=args.max_new_tokens, compare=args.compare)


def main(argv: list[str], *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """Entry point; ``argv[0]`` is the subcommand. User errors exit 2 with one ``loragen: error:`` line."""
    command, rest = argv[0], argv[1:]
    if command not in _DESCRIPTIONS:
        raise SystemExit(f"loragen: error: unknown deployment command {command!r}: use generate, apply or chat")
    args = build_parser(command).parse_args(rest)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        _run(command, args, stdin or sys.stdin, stdout or sys.stdout)
    except LoRAGenError as err:
        message = " ".join(str(err).split("\n"))
        print(f"loragen: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
