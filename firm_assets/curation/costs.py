"""Cost accounting for a model-calling asset: a meter made at the start of the asset's body collects
each stage's stats (or a training subprocess's own figures) and, as the asset returns, records the
materialization's wall and CPU seconds, GPU seconds and per-model calls, tokens and images in the
warehouse (`warehouse/costs.py`).

CPU seconds are the process's CPU time (all threads, model threads included) over the body, plus
that of the child processes it waited for meanwhile (a Pipes training subprocess, the ranks its
launcher started, their DataLoader workers); GPU seconds are the model seconds of calls that ran on
a local CUDA device (a server's are its own), and a trainer's wall time on every CUDA rank."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field, replace

from firm_assets.curation.cache import StageStats
from resources.chat import ModelRef
from warehouse.connection import Warehouse
from warehouse.costs import MODEL_FIGURES, MaterializationCost, ModelCost, record_cost


def model_cost(stats: StageStats) -> ModelCost:
    """One stage's stats as its cost line; a stage always knows its model (set by `run_cached`)."""
    if stats.model is None:
        raise ValueError(f"stage {stats.stage!r} has no model: its stats did not come from run_cached")
    return ModelCost(
        stage=stats.stage,
        model_id=stats.model.model_id,
        model_revision=stats.model.revision,
        backend=stats.model.backend,
        model_calls=stats.model_calls,
        cache_hits=stats.cache_hits,
        model_seconds=stats.model_seconds,
        gpu_seconds=stats.model_seconds if stats.on_gpu else 0.0,
        tokens_in=stats.tokens_in,
        tokens_out=stats.tokens_out,
        images_generated=stats.images_generated,
    )


def merge(lines: list[ModelCost]) -> list[ModelCost]:
    """Lines of the same stage and model summed (a stage run once per bench side or image config)."""
    merged: dict[tuple[str, str, str], ModelCost] = {}
    for line in lines:
        key = (line.stage, line.model_id, line.model_revision)
        old = merged.get(key)
        merged[key] = (
            line
            if old is None
            else replace(old, **{f: getattr(old, f) + getattr(line, f) for f in MODEL_FIGURES})
        )
    return list(merged.values())


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children that were waited for (their own
    waited-for children included, so a launcher's ranks count)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def training_figures(seconds: float, on_cuda: bool, processes: int, **counts: int) -> dict[str, float | int]:
    """What a training subprocess reports as its cost: its training wall time as model seconds, the
    same on each of its `processes` ranks as GPU seconds when they ran on CUDA (none on the CPU), and
    counts such as `tokens_in` or `images_generated`."""
    unknown = counts.keys() - set(MODEL_FIGURES)
    if unknown:
        raise ValueError(f"not cost figures: {sorted(unknown)}")
    return {"model_seconds": seconds, "gpu_seconds": seconds * processes if on_cuda else 0.0, **counts}


@dataclass
class CostMeter:
    """What one materialization has spent since the meter was made (at the start of the asset's body);
    `add` each stage's stats, then `record` it."""

    wall_start: float = field(default_factory=time.perf_counter)
    cpu_start: float = field(default_factory=time.process_time)
    children_cpu_start: float = field(default_factory=children_cpu_seconds)
    lines: list[ModelCost] = field(default_factory=list)

    def add(self, stats: StageStats) -> StageStats:
        """Records a model stage's cost and passes its stats through."""
        self.lines.append(model_cost(stats))
        return stats

    def add_training(self, stage: str, model: ModelRef, figures: dict[str, float | int]) -> None:
        """A training subprocess's figures (`training_figures`, sent back over Pipes) as the line of
        the model it trained; what it did not report is 0 (it reads no cache)."""
        values = dict.fromkeys(MODEL_FIGURES, 0) | figures
        self.lines.append(ModelCost(stage, model.model_id, model.revision, model.backend, **values))

    def totals(self) -> dict[str, float | int]:
        """Calls, cache hits, model seconds and tokens over every stage so far (an asset's metadata)."""
        lines = self.lines
        return {
            "model_calls": sum(line.model_calls for line in lines),
            "cache_hits": sum(line.cache_hits for line in lines),
            "model_seconds": round(sum(line.model_seconds for line in lines), 3),
            "tokens_in": sum(line.tokens_in for line in lines),
            "tokens_out": sum(line.tokens_out for line in lines),
        }

    def cost(self, run_id: str, asset_key: str, data_version: str | None) -> MaterializationCost:
        """The materialization's total cost, ready for the warehouse."""
        return MaterializationCost(
            run_id,
            asset_key,
            data_version,
            time.perf_counter() - self.wall_start,
            time.process_time() - self.cpu_start + children_cpu_seconds() - self.children_cpu_start,
            tuple(merge(self.lines)),
        )

    def record(self, context, warehouse: Warehouse, data_version: str | None) -> None:
        """Record the materialization's cost so far (call it once, as the asset returns its output; a
        step that fails leaves no cost row, its committed calls stay in the cache)."""
        record_cost(warehouse, self.cost(context.run_id, context.asset_key.to_user_string(), data_version))
