"""Deployment: turn a trained generator + a system prompt into something an edge device can serve.

- ``artifacts``: hashes, the ``loragen_meta.json`` file, atomic output directories.
- ``gates``: the compact gates record (L×n gates + pair fingerprint + checkpoint hash), exact round trip.
- ``cache``: generated gates cached by (checkpoint hash, system-prompt hash), so a prompt costs one cloud pass.
- ``checkpoint``: read a checkpoint; load the full generator, or only its edge side (edge model + expert pool).
- ``deployment``: ``Deployment``, a checkpoint ready to serve prompts (lazy loading, prompt checks, cache).
- ``export``: write a PEFT adapter, a merged Hugging Face model or a gates file.
- ``report``: cloud and merge time, payload sizes, edge tokens/time saved, break-even requests.
- ``generate``: the ``loragen generate`` and ``loragen apply`` commands as functions.
- ``chat``: the ``loragen chat`` session (streamed answers, optional comparison with the prompted base).
- ``cli``: argparse front end for ``loragen generate | apply | chat``.
"""
