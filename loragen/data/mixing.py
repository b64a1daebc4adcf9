"""The training mixture over tasks: a per-task cap and a temperature, as T5 and FLAN mix their tasks.

Task ``i`` with ``n_i`` records is first capped to ``c_i = min(n_i, cap)``; the mixture has ``N = sum(c_i)``
records, task ``i`` a share ``c_i^(1/T) / sum_j c_j^(1/T)`` of it, at most ``cap``. ``T = 1`` keeps the
capped sizes (exactly the seeded subsets loragen has always trained on); ``T > 1`` flattens the mix, so
a small task repeats its records and a large one is subsampled. Everything is seeded by the task name
and the seed: the same configuration always trains on the same records.
"""

from __future__ import annotations

import math
import random
from typing import TypeVar

from loragen import LoRAGenError

T = TypeVar("T")


def check_temperature(temperature: float) -> None:
    if not isinstance(temperature, int | float) or not math.isfinite(temperature) or temperature < 1:
        raise LoRAGenError(
            f"data.mixing_temperature must be a number >= 1 (1 = proportional to the capped task "
            f"sizes, larger = flatter), got {temperature!r}"
        )


def mixture_sizes(sizes: dict[str, int], cap: int | None, temperature: float) -> dict[str, int]:
    """Records each task contributes to the mixture (see the module docstring)."""
    check_temperature(temperature)
    capped = {task: n if cap is None else min(n, cap) for task, n in sizes.items()}
    if temperature == 1 or not capped:
        return capped
    total = sum(capped.values())
    weights = {task: c ** (1 / temperature) for task, c in capped.items() if c > 0}
    norm = sum(weights.values())
    limit = cap if cap is not None else total
    return {task: min(limit, round(total * weights[task] / norm)) if task in weights else 0 for task in capped}


def take(records: list[T], count: int, key: str) -> list[T]:
    """``count`` of ``records``: a seeded subset (in file order) when fewer, whole copies plus a seeded
    subset when more."""
    if count <= len(records):
        if count == len(records):
            return list(records)
        keep = sorted(random.Random(key).sample(range(len(records)), count))
        return [records[i] for i in keep]
    copies, rest = divmod(count, len(records))
    return records * copies + take(records, rest, f"{key}|rest")


def mix(by_task: dict[str, list[T]], cap: int | None, temperature: float, seed: int) -> list[T]:
    """The training records of the mixture, task by task (the sampler shuffles them)."""
    sizes = mixture_sizes({task: len(records) for task, records in by_task.items()}, cap, temperature)
    return [
        r
        for task, records in by_task.items()
        for r in take(records, sizes[task], f"loragen-train-subset|{task}|{seed}")
    ]
