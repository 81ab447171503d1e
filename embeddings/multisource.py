"""Multi-source transfer: combine several recommended sources for one target, for every seed.

Methods (`MultiSourceOptions.method`):

* "scalearn", "scalearn_uniform", "scalearn_plus", "scalearn_uniform_plus" (Frohmann et al. 2023),
  "adapterfusion" (Pfeiffer et al. 2021), "pemt" (Lin et al. 2024): two-stage. Stage 1
  (embeddings/source_adapters.py) trains one bottleneck adapter per source on the frozen encoder,
  cached and reused across targets, and (ScaLearn, AdapterFusion) the target's own adapter; stage 2
  (embeddings/fusion.py) trains only the combination and a new head, through `fine_tune`.
* "camtl" (Pilault et al. 2021, embeddings/camtl.py): joint multi-task training of the target and
  the sources with task-conditioned modules.

All run for classification, regression, sequence labelling and extractive QA targets (the heads and
the metrics are the fine-tuning ones; the combination never looks at the task type), and any mix of
source task types (a source's head is dropped after stage 1). Reported per method: dev score per
seed, mean and std, the number of trained parameters, wall time, and the combination's weights per
source (ScaLearn: mean scale; AdapterFusion: mean attention; PEMT: mean gate; CA-MTL: steps spent
on each task).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embeddings.camtl import CamtlOptions, train_camtl
from embeddings.data import Dataset
from embeddings.encoders import Encoder
from embeddings.features import collate, length_sorted_batches, tokenize
from embeddings.finetune import FinetuneOptions, FinetuneResult, TaskModel, fine_tune
from embeddings.fusion import (
    ADAPTER_METHODS,
    SCALEARN_VARIANTS,
    TARGET,
    FusedBody,
    build_fused_body,
    correlation_prior,
    mean_fusion_weights,
    scalearn_weights,
)
from embeddings.options import ProgressFn, no_progress
from embeddings.registry import MULTI_SOURCE_METHODS, TRANSFER_METHODS  # noqa: F401 - re-exported
from embeddings.source_adapters import AdapterOptions, StoredAdapter, source_adapter, target_adapter

DEFAULT_COMBINATION_LR = {  # our defaults for the stage-2 parameters (AdapterFusion's is its paper's 5e-5)
    "scalearn": 3e-3, "scalearn_uniform": 3e-3, "scalearn_plus": 3e-3, "scalearn_uniform_plus": 3e-3,
    "adapterfusion": 5e-5, "pemt": 5e-4,
}
WEIGHT_KIND = {**dict.fromkeys(SCALEARN_VARIANTS, "scale"), "adapterfusion": "attention", "pemt": "gate",
               "camtl": "task_examples"}


@dataclass(frozen=True)
class MultiSourceOptions:
    method: str = field(default="scalearn", metadata={"help": "One of MULTI_SOURCE_METHODS."})
    target: FinetuneOptions = field(
        default_factory=FinetuneOptions,
        metadata={"help": "Stage-2 training on the target (epochs, batch size, length); its learning rate is "
                          "CA-MTL's for the encoder's upper layers."})
    combination_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of what stage 2 adds (default per method: "
                                        "DEFAULT_COMBINATION_LR; CA-MTL: camtl.conditional_learning_rate)."})
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Stage 2's new head (adapter methods); default: the stage-1 adapter "
                                        "learning rate, at which a head over the frozen body trains in stage 1."})
    adapter: AdapterOptions = field(default_factory=AdapterOptions,
                                    metadata={"help": "Stage-1 adapters: architecture and training."})
    seeds: tuple[int, ...] = field(default=(13, 14), metadata={"help": "One stage-2 run per seed."})
    source_max_rows: int = field(default=3000, metadata={"help": "A source is subsampled to this many rows."})
    target_max_rows: int = field(default=1000, metadata={"help": "The target's training rows are capped here."})
    data_seed: int = field(default=13, metadata={"help": "Seeds the subsamples."})
    prior_temperature: float = field(default=1.0, metadata={"help": "PEMT: softmax temperature of the prior."})
    prior_weight: float = field(default=0.1, metadata={"help": "PEMT: weight of KL(prior || mean gate)."})
    sparsity_weight: float = field(default=0.01, metadata={"help": "PEMT: weight of the gate entropy."})
    camtl: CamtlOptions = field(default_factory=CamtlOptions, metadata={"help": "CA-MTL's options."})

    def __post_init__(self) -> None:
        if self.method not in MULTI_SOURCE_METHODS:
            raise ValueError(f"unknown multi-source method {self.method!r}; one of {', '.join(MULTI_SOURCE_METHODS)}")
        if not self.seeds:
            raise ValueError("at least one seed")
        if self.combination_learning_rate is not None and self.combination_learning_rate <= 0:
            raise ValueError("combination_learning_rate must be positive")
        if self.prior_temperature <= 0 or self.prior_weight < 0 or self.sparsity_weight < 0:
            raise ValueError("prior_temperature must be positive, prior_weight and sparsity_weight >= 0")
        if self.source_max_rows < 2 or self.target_max_rows < 2:
            raise ValueError("source_max_rows and target_max_rows must be >= 2")

    @property
    def learning_rate(self) -> float:
        """Stage 2's learning rate for what the method adds."""
        if self.combination_learning_rate is not None:
            return self.combination_learning_rate
        if self.method == "camtl":
            return self.camtl.conditional_learning_rate
        return DEFAULT_COMBINATION_LR[self.method]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MultiSourceReport:
    method: str
    target: str
    main_metric: str
    sources: list[str]
    scores: list[float]
    mean: float
    std: float
    trained_parameters: int  # everything stage 2 trains, heads included
    method_parameters: int  # the same without the task heads
    seconds: float  # mean wall time per seed: stage 2, plus the target adapter where trained in this call
    source_seconds: float  # stage 1 for the sources in this call (0 when every adapter came from the cache)
    weight_kind: str | None
    source_weights: dict[str, float] | None  # per source (and "target" where its adapter takes part)
    single_adapter_scores: list[float] | None  # the target's own adapter alone, per seed (ScaLearn, AdapterFusion)
    prior: dict[str, float] | None  # PEMT's correlation prior per source
    adapters: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainable_parameters(module: nn.Module) -> int:
    """Parameters that require gradients, each counted once (ScaLearn++ shares one tensor across layers)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


class _Phases:
    """on_progress over consecutive phases of given weights (a phase's own progress scaled into its share)."""

    def __init__(self, weights: list[float], on_progress: ProgressFn, scale: int = 1000) -> None:
        self.weights, self.on_progress, self.scale = weights, on_progress, scale
        self.total = sum(weights)

    def phase(self, index: int) -> ProgressFn:
        before = sum(self.weights[:index])

        def report(done: int, total: int) -> None:
            share = before + self.weights[index] * min(1.0, done / max(1, total))
            self.on_progress(round(self.scale * share / self.total), self.scale)
        return report


def multi_source_transfer(target_train: Dataset, target_dev: Dataset, sources: list[Dataset], encoder: Encoder,
                          options: MultiSourceOptions, *, cache_dir: str | Path,
                          source_scores: list[float] | None = None, source_names: list[str] | None = None,
                          checkpoint_dir: str | Path | None = None, on_progress: ProgressFn = no_progress,
                          on_stage: Callable[[str], None] | None = None) -> MultiSourceReport:
    """Run `options.method` over `sources` for every seed; the target's rows are capped, dev is used whole.

    `source_scores` (the ranking's fused similarity per source) is PEMT's correlation prior; without
    it the prior is uniform. `source_names` name the sources in the report (default: their names).
    `checkpoint_dir` holds resumable stage-2 checkpoints (one folder per seed; not for CA-MTL).
    """
    if not sources:
        raise ValueError("multi-source transfer needs at least one source")
    if target_train.task_type != target_dev.task_type:
        raise ValueError(f"train is {target_train.task_type.value} but dev is {target_dev.task_type.value}")
    stage = on_stage or (lambda _text: None)
    names = _unique(source_names or [s.name for s in sources])
    if len(names) != len(sources):
        raise ValueError("one name per source")
    method = options.method
    train = target_train.subsample(options.target_max_rows, options.data_seed)
    seeds = list(options.seeds)
    adapter_based = method in ADAPTER_METHODS
    with_target_adapter = adapter_based and method != "pemt"
    weights = [1.0] * len(sources) if adapter_based else []
    weights += [2.0 if with_target_adapter else 1.0] * len(seeds)
    phases = _Phases(weights, on_progress)
    on_progress(0, phases.scale)
    cache = Path(cache_dir)
    stored: list[StoredAdapter] = []
    source_seconds = 0.0
    if adapter_based:
        for i, (source, name) in enumerate(zip(sources, names, strict=True)):
            stage(f"adapter for {name} ({i + 1}/{len(sources)})")
            adapter = source_adapter(source, encoder, options.adapter, cache, max_rows=options.source_max_rows,
                                     data_seed=options.data_seed, on_progress=phases.phase(i))
            source_seconds += adapter.seconds
            stored.append(adapter)
    prior = correlation_prior(source_scores, len(sources), options.prior_temperature) if method == "pemt" else None
    runs: list[dict[str, Any]] = []
    trained = method_params = 0
    for j, seed in enumerate(seeds):
        report_progress = phases.phase(len(stored) + j)
        stage(f"{method}, seed {seed} ({j + 1}/{len(seeds)})")
        started = time.perf_counter()
        if method == "camtl":
            subsets = [s.subsample(options.source_max_rows, options.data_seed) for s in sources]
            camtl = replace(options.camtl, conditional_learning_rate=options.learning_rate)
            report, camtl_model = train_camtl(train, target_dev, subsets, encoder,
                                              replace(options.target, seed=seed), camtl, on_progress=report_progress)
            trained = trainable_parameters(camtl_model)
            method_params = trained - trainable_parameters(camtl_model.heads)
            run = {"seed": seed, **report.result.to_dict(), "task_examples": report.task_examples,
                   "frozen_layers": report.frozen_layers,
                   "weights": _example_shares(report.task_examples, names)}
            run["seconds"] = time.perf_counter() - started
            runs.append(run)
            continue
        target_state, single = None, None
        if with_target_adapter:
            def target_progress(done: int, total: int, _report: ProgressFn = report_progress) -> None:
                _report(done, 2 * max(1, total))

            own_options = replace(options.adapter, train=replace(options.adapter.train, epochs=options.target.epochs))
            own = target_adapter(train, target_dev, encoder, own_options, cache, seed=seed,
                                 on_progress=target_progress)
            target_state, single = own.state, (own.result or {}).get("score")

        def stage2_progress(done: int, total: int, _report: ProgressFn = report_progress) -> None:
            if with_target_adapter:
                _report(total + done, 2 * max(1, total))
            else:
                _report(done, total)

        run_dir = Path(checkpoint_dir) / f"seed-{seed}" if checkpoint_dir is not None else None
        result, model, body = train_fused(train, target_dev, encoder, options, [a.state for a in stored],
                                          target_state, seed=seed, prior=prior, checkpoint_dir=run_dir,
                                          on_progress=stage2_progress)
        trained = trainable_parameters(model)
        method_params = trained - trainable_parameters(model.head)
        adapter_names = [*names, TARGET] if with_target_adapter else names
        means, per_layer = combination_weights(body, target_dev, encoder, options.target)
        run = {"seed": seed, **result.to_dict(), "single_adapter_score": single,
               "weights": dict(zip(adapter_names, means, strict=True)), "weights_per_layer": per_layer,
               "seconds": time.perf_counter() - started}
        if not math.isfinite(result.score):
            raise ValueError(f"seed {seed}: the dev {result.main_metric} is undefined (training diverged?)")
        runs.append(run)
    scores = [float(r["score"]) for r in runs]
    mean, std = _mean_std(scores)
    keys = list(runs[0]["weights"])
    source_weights = {k: statistics.fmean(float(r["weights"][k]) for r in runs) for k in keys}
    singles = [r["single_adapter_score"] for r in runs if r.get("single_adapter_score") is not None]
    return MultiSourceReport(
        method=method, target=target_train.name, main_metric=runs[0]["main_metric"], sources=names,
        scores=scores, mean=mean, std=std, trained_parameters=trained, method_parameters=method_params,
        seconds=statistics.fmean(float(r["seconds"]) for r in runs), source_seconds=source_seconds,
        weight_kind=WEIGHT_KIND[method], source_weights=source_weights,
        single_adapter_scores=[float(s) for s in singles] or None,
        prior=dict(zip(names, prior.tolist(), strict=True)) if prior is not None else None,
        adapters=[{"source": name, "file": a.path.name, "reused": a.reused, "seconds": a.seconds}
                  for name, a in zip(names, stored, strict=False)],  # none for CA-MTL
        runs=runs, options=options.to_dict())


def train_fused(train: Dataset, dev: Dataset, encoder: Encoder, options: MultiSourceOptions,
                source_states: list[dict[str, torch.Tensor]], target_state: dict[str, torch.Tensor] | None, *,
                seed: int, prior: torch.Tensor | None = None, checkpoint_dir: str | Path | None = None,
                on_progress: ProgressFn = no_progress) -> tuple[FinetuneResult, TaskModel, FusedBody]:
    """Stage 2 of an adapter method for one seed: `fine_tune` over the fused body, a new head on top."""
    fused: dict[str, FusedBody] = {}

    def build() -> nn.Module:  # called by fine_tune after seeding, so new modules initialise reproducibly
        fused["body"] = build_fused_body(options.method, encoder, source_states, target_state, options.adapter,
                                         prior=prior, prior_weight=options.prior_weight,
                                         sparsity_weight=options.sparsity_weight)
        return fused["body"].body

    def auxiliary(model: TaskModel) -> torch.Tensor | None:
        loss_fn = fused["body"].auxiliary
        return loss_fn(model) if loss_fn is not None else None

    result, model = fine_tune(train, dev, encoder,
                              replace(options.target, learning_rate=options.learning_rate, seed=seed),
                              body=build, auxiliary_loss=auxiliary, checkpoint_dir=checkpoint_dir,
                              on_progress=on_progress,
                              head_learning_rate=options.head_learning_rate or options.adapter.train.learning_rate)
    return result, model, fused["body"]


def combination_weights(fused: FusedBody, dev: Dataset, encoder: Encoder, options: FinetuneOptions
                        ) -> tuple[list[float], list[list[float]]]:
    """Per fused adapter: ScaLearn's mean scale, AdapterFusion's mean attention or PEMT's mean gate on dev."""
    if fused.method in SCALEARN_VARIANTS:
        return scalearn_weights(fused)
    return mean_fusion_weights(fused, _dev_batches(dev, encoder, options), encoder.autocast())


def _example_shares(task_examples: dict[str, int], names: list[str]) -> dict[str, float]:
    """CA-MTL's share of the training examples per task: the target's, then each source's in order."""
    counts = list(task_examples.values())  # the target first, then the sources in order
    total = max(1, sum(counts))
    return {TARGET: counts[0] / total, **{name: c / total for name, c in zip(names, counts[1:], strict=True)}}


def _dev_batches(dev: Dataset, encoder: Encoder, options: FinetuneOptions) -> list[dict[str, torch.Tensor]]:
    features = tokenize(dev, encoder.tokenizer, options)
    return [collate(features, index, encoder.device, with_labels=False).model_inputs()
            for index in length_sorted_batches(features.lengths, options.eval_max_tokens)]
