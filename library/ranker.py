"""The learned ranker: trained on measured transfers, it answers in expected relative gain.

Every other ranking method scores a proxy (a cosine, a fused rank, a LogME evidence). This one is
fitted on transfers that were actually run in the library's own regime (the shipped transfer matrix,
then every intermediate-transfer job the service finishes, `library.ranker_store`) and predicts, for a
(target, source) pair, the relative gain in % of the no-transfer baseline, an 80% interval and the
probability that the gain is positive.

* Features (`FEATURES`, documented there) come from one place, `pair_features`, for a matrix target at
  fit time (the target is a library task: its stored vectors, left out as a source) and for a user's
  target at ranking time (`library.methods.learned`); the source prior (`prior_features`) is added from
  the training gains, leave-one-target-out, through `library.evaluation.source_mean_gains`.
* Candidates (`CANDIDATES`: scikit-learn gradient boosting, a random forest, a ridge regression, and the
  forest without the per-component TaskEmb ranks) are
  compared by leave-one-target-out validation (`validate`) with `library.evaluation.evaluate` (NDCG@5,
  rho, regret@3, with the random, DataSize and source-prior baselines on the same targets), beside the
  unlearned methods' rankings of the same pairs. The best is refitted on every row.
* A new version is activated only when it validates no worse than the active one on the same rows
  (`fit_ranker`); versions are kept (`RankerStore`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from library.errors import LibraryError
from library.evaluation import (
    Run,
    TransferTable,
    evaluate,
    informativeness,
    ndcg_at_k,
    source_mean_gains,
    undefined_baselines,
)
from library.methods.ensemble import PARTS  # the embeddings the ensemble (and the learned ranker) read
from library.ranker_store import RankerStore, RankerVersion
from library.store import LibraryStore, SourceTask

log = logging.getLogger(__name__)

NAME = "learned"
QUANTILES = (0.1, 0.9)  # the interval: nominal 80%
UNLEARNED = (*PARTS, "ensemble", "esm_logme")  # ranked by their rank feature in validation
# validation's "learned, selection validated" row: per held-out target, the candidate chosen by
# leave-one-target-out on the other targets only (nested), so it is the figure to quote
NESTED = "nested"
# `learned` becomes the service's default method when its active version beat every unlearned method
# (nested row) on at least this many informative targets: fewer cannot separate methods from luck
MIN_DEFAULT_TARGETS = 5
SINGLE_VECTOR = tuple(p for p in PARTS if p != "taskemb")  # TextEmb and SEmb: one vector, a cosine

FEATURES: dict[str, str] = {
    "textemb_similarity": "TextEmb similarity of target and source (library-centred cosine of mean token "
                          "embeddings): what the text is about",
    "textemb_rank": "the source's rank by TextEmb among every library source (1 = closest)",
    "semb_similarity": "SEmb similarity (sentence embeddings): text domain and style",
    "semb_rank": "the source's rank by SEmb among every library source",
    "taskemb_score": "TaskEmb's fused score (reciprocal rank fusion of its Fisher components)",
    "taskemb_rank": "the source's rank by fused TaskEmb",
    "taskemb_<component>_rank": "the source's rank by one TaskEmb Fisher component (one feature each)",
    "ensemble_rank": "the source's rank by the ensemble (TextEmb, SEmb and TaskEmb fused)",
    "esm_logme": "ESM-LogME evidence: how well the target's labels are explained by its features after the "
                 "source's embedding space map (missing where the target has no usable labels or the "
                 "library no maps)",
    "esm_logme_rank": "the source's rank by ESM-LogME",
    "prior_gain": "the source prior: the source's mean relative gain (%) over the other training targets",
    "prior_targets": "on how many other training targets the source was measured",
    "source_log_rows": "log10 of the source's training rows",
    "target_log_rows": "log10 of the target's training rows",
    "same_type": "1 when source and target share a task type, else 0",
    "source_labels": "the source's number of labels (0: regression or none listed)",
    "target_labels": "the target's number of labels (0: regression or none listed)",
    "source_tokens_per_row": "the source's mean tokens per row (the library's embedded subsample, truncated "
                             "at its max length)",
    "target_tokens_per_row": "the target's mean tokens per row, measured the same way",
    "tokens_ratio_log2": "log2 of source over target tokens per row",
}
PRIOR_KEYS = ("prior_gain", "prior_targets")


# -- what a task is, for the features ------------------------------------------------------------------

@dataclass(frozen=True)
class TaskFacts:
    """A task's size, labels and text length, as the features read them (None: unknown)."""

    task_type: str
    rows: int | None = None
    labels: int | None = None
    tokens_per_row: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskFacts:
        return cls(task_type=str(data.get("task_type", "")), rows=data.get("rows"), labels=data.get("labels"),
                   tokens_per_row=data.get("tokens_per_row"))


def facts_from_task(task: SourceTask, data_root: Path | None = None) -> TaskFacts:
    """A library task's facts: rows from the store, tokens per row from its build record, labels from its
    task folder's task.json under `data_root` (unknown without one)."""
    prov = task.provenance if isinstance(task.provenance, dict) else {}
    found = prov.get("build")
    build: dict[str, Any] = found if isinstance(found, dict) else {}
    tokens, used = build.get("tokens"), build.get("rows_used")
    tpr = float(tokens) / float(used) if isinstance(tokens, int | float) and used else None
    labels = None
    if data_root is not None:
        meta = Path(data_root) / str(prov.get("folder") or task.name) / "task.json"
        try:
            listed = json.loads(meta.read_text(encoding="utf-8")).get("labels")
            labels = len(listed) if isinstance(listed, list) else 0
        except (OSError, ValueError, AttributeError):
            labels = None
    return TaskFacts(task_type=task.task_type, rows=task.num_train, labels=labels, tokens_per_row=tpr)


def facts_from_dataset(dataset: Any, textemb: Any = None) -> TaskFacts:
    """A user's target: its rows and labels from the dataset, tokens per row from its TextEmb embedding
    (the same subsample and truncation as the library's build record)."""
    tpr = None
    if textemb is not None and textemb.num_examples:
        tpr = float(textemb.num_tokens) / float(textemb.num_examples)
    return TaskFacts(task_type=dataset.task_type.value, rows=len(dataset), labels=len(dataset.labels or []),
                     tokens_per_row=tpr)


# -- the features ---------------------------------------------------------------------------------------

def _placements(items: Sequence[Any]) -> dict[str, tuple[float, int, Mapping[str, Any]]]:
    """name -> (score, rank, details) from a ranking's entries (`Entry` or `RankedSource`)."""
    out = {}
    for item in items:
        name = item.task.name if hasattr(item, "task") else item.name
        out[name] = (float(item.score), int(item.rank), item.details or {})
    return out


def _log10(value: int | None) -> float:
    return math.log10(value + 1) if value is not None and value >= 0 else math.nan


def _num(value: float | int | None) -> float:
    return float(value) if value is not None else math.nan


def pair_features(target: TaskFacts, sources: Mapping[str, TaskFacts],
                  rankings: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, float]]:
    """Every source's features for one target, except the prior (added by `prior_features`).

    `rankings`: method -> its ranking of every library source but the target (TextEmb, SEmb, TaskEmb
    with component details, "ensemble", optionally "esm_logme"). The one place features are
    computed: fit time and ranking time both call it.
    """
    placed = {m: _placements(items) for m, items in rankings.items()}
    names = sorted(set().union(*[set(p) for p in placed.values()])) if placed else []
    out: dict[str, dict[str, float]] = {}
    for name in names:
        facts = sources.get(name) or TaskFacts(task_type="")
        f: dict[str, float] = {}
        for method in SINGLE_VECTOR:
            p = placed.get(method, {}).get(name)
            f[f"{method}_similarity"] = p[0] if p else math.nan
            f[f"{method}_rank"] = float(p[1]) if p else math.nan
        p = placed.get("taskemb", {}).get(name)
        f["taskemb_score"] = p[0] if p else math.nan
        f["taskemb_rank"] = float(p[1]) if p else math.nan
        for component, d in sorted((p[2] if p else {}).items()):
            if isinstance(d, Mapping) and "rank" in d:
                f[f"taskemb_{component}_rank"] = float(d["rank"])
        p = placed.get("ensemble", {}).get(name)
        f["ensemble_rank"] = float(p[1]) if p else math.nan
        p = placed.get("esm_logme", {}).get(name)
        f["esm_logme"] = p[0] if p else math.nan
        f["esm_logme_rank"] = float(p[1]) if p else math.nan
        f["source_log_rows"] = _log10(facts.rows)
        f["target_log_rows"] = _log10(target.rows)
        f["same_type"] = float(facts.task_type == target.task_type) if facts.task_type else math.nan
        f["source_labels"] = _num(facts.labels)
        f["target_labels"] = _num(target.labels)
        f["source_tokens_per_row"] = _num(facts.tokens_per_row)
        f["target_tokens_per_row"] = _num(target.tokens_per_row)
        ratio = (facts.tokens_per_row or 0) / (target.tokens_per_row or 0) if target.tokens_per_row else 0
        f["tokens_ratio_log2"] = math.log2(ratio) if ratio > 0 else math.nan
        out[name] = f
    return out


def prior_features(gains: Mapping[str, Mapping[str, float]], sources: Sequence[str],
                   exclude: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """The source prior as features: mean relative gain over the training targets but `exclude`."""
    means = source_mean_gains(gains, sources, exclude=exclude)
    return {s: {"prior_gain": m if m is not None else math.nan, "prior_targets": float(n)}
            for s, (m, n) in means.items()}


def feature_names(rows: Sequence[Mapping[str, float]]) -> list[str]:
    """The model's columns: every feature any row has, in a fixed order."""
    return sorted(set().union(*[set(r) for r in rows])) if rows else []


def _usable(x: np.ndarray) -> list[int]:
    """Columns with at least two distinct known values (a constant or empty column teaches nothing, and
    trips scikit-learn's histogram binning)."""
    keep = []
    for j in range(x.shape[1]):
        column = x[:, j]
        if len(np.unique(column[np.isfinite(column)])) >= 2:
            keep.append(j)
    return keep


def _matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    return np.array([[float(r.get(n, math.nan)) for n in names] for r in rows], dtype=np.float64).reshape(
        len(rows), len(names))


# -- regimes ------------------------------------------------------------------------------------------

def regime_id(model_hash: str, source: Mapping[str, Any], source_max_rows: int) -> str:
    """Which transfers may be learned from together: the encoder's weights and the source training regime
    (epochs, learning rate, batch size, length, early stopping, row cap). Short, stable, printable."""
    core = {"epochs": float(source.get("epochs") or 0), "learning_rate": float(source.get("learning_rate") or 0),
            "batch_size": int(source.get("batch_size") or 0), "max_length": int(source.get("max_length") or 0),
            "evaluations_per_epoch": int(source.get("evaluations_per_epoch") or 0),
            "early_stopping_patience": int(source.get("early_stopping_patience") or 0),
            "max_rows": int(source_max_rows)}
    digest = sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:10]
    return f"{model_hash[:16]}-{digest}"


def service_regime(model_hash: str) -> str:
    """The regime of the service's own transfer jobs when the sources train the default way (the regime the
    shipped matrix was measured in: `embeddings.transfer.SOURCE_REGIME`)."""
    from embeddings.transfer import SOURCE_MAX_ROWS, SOURCE_REGIME

    return regime_id(model_hash, asdict(SOURCE_REGIME), SOURCE_MAX_ROWS)


def matrix_regime(sidecar: Mapping[str, Any]) -> str | None:
    """A transfer matrix's regime from its sidecar; None when the sidecar does not record one."""
    regime, model = sidecar.get("source_regime"), sidecar.get("model")
    if not isinstance(regime, Mapping) or not isinstance(model, Mapping) or not model.get("weights_hash"):
        return None
    found = regime.get("options")
    options: Mapping[str, Any] = found if isinstance(found, Mapping) else regime
    return regime_id(str(model["weights_hash"]), options, int(regime.get("max_rows") or 0))


def library_model_hash(store: LibraryStore) -> str | None:
    hashes = sorted({k.model_hash for k in store.keys() if k.method == "textemb"})
    return hashes[0] if hashes else None


# -- the training rows --------------------------------------------------------------------------------

@dataclass
class Example:
    target: str
    source: str
    gain: float
    features: dict[str, float]  # without the prior


@dataclass
class TrainingData:
    examples: list[Example]
    table: TransferTable  # every run of the examples' pairs (evaluation, informativeness)
    target_hashes: dict[str, str]
    source_facts: dict[str, dict[str, Any]]
    regime: str
    trained_on: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def gains(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for e in self.examples:
            out.setdefault(e.target, {})[e.source] = e.gain
        return out


def _table(runs: list[Run], majority: Mapping[str, float]) -> TransferTable:
    from library.evaluation import _averaged  # the one averaging of runs into pairs

    return TransferTable(_averaged(runs), runs=runs, majority=dict(majority))


def library_rankings(service: Any, task: SourceTask, use_rows: bool) -> dict[str, Sequence[Any]]:
    """A library task's rankings of every other library source, as `pair_features` reads them: its stored
    vectors are the query; ESM-LogME from its task folder's rows when `use_rows` and it can."""
    from library.service import stored_targets

    library = service.library
    stored = stored_targets(service.store, task)
    everything = max(len(service.store.list_tasks()), 1)
    out: dict[str, Sequence[Any]] = {}
    for method in PARTS:
        if method in stored:
            out[method] = library.rank({method: stored[method]}, method, top_k=everything, all_class=True).sources
    if all(m in stored for m in PARTS):
        parts = {m: stored[m] for m in PARTS}
        out["ensemble"] = library.rank(parts, "ensemble", top_k=everything, all_class=True).sources
    if use_rows:
        try:
            rows = service.target_rows(task.name)
            if rows is not None:
                cache = service.cache
                options = None
                if cache is not None:
                    from library.pipeline import ranking_options

                    options = ranking_options(service.store, service.encoder, service.token_budget)
                    rows.features = cache.get_rows(task.data_hash, service.encoder.weights_hash, options.options_hash)
                if rows.features is None:
                    rows.base_features()
                    if cache is not None and options is not None:
                        cache.put_rows(task.data_hash, service.encoder.weights_hash, options.options_hash,
                                       rows.features)
                rows.target_hash = task.data_hash
                out["esm_logme"] = library.rank({}, "esm_logme", top_k=everything, all_class=True, rows=rows,
                                                exclude_hash=task.data_hash).sources
        except LibraryError as exc:
            log.info("no ESM-LogME feature for %s: %s", task.name, exc)
    return out


def gather(service: Any, rstore: RankerStore, matrix: Path | None, *, use_rows: bool = True,
           progress: Callable[[str], None] | None = None, any_regime: bool = False,
           min_targets: int = 0) -> TrainingData:
    """The training rows in the library's regime: the matrix's pairs (when its sidecar's regime is the
    library's) and the service's recorded transfer results of that regime. Other regimes are left out,
    with a note. `any_regime`: take the matrix whatever its regime (validation only, never stored)."""
    from library.transfers import read_matrix_runs, read_sidecar, sidecar_path

    store: LibraryStore = service.store
    model_hash = library_model_hash(store)
    if model_hash is None:
        raise LibraryError("the library has no embeddings: build or import it first")
    regime = service_regime(model_hash)
    notes: list[str] = []
    tasks = {t.name: t for t in store.list_tasks()}
    data_root = getattr(service, "source_data_dir", None)
    source_facts = {name: facts_from_task(t, data_root) for name, t in tasks.items()}
    runs: list[Run] = []
    majority: dict[str, float] = {}
    matrix_info: dict[str, Any] = {"path": str(matrix) if matrix else None, "rows": 0, "used": False}
    if matrix is not None and matrix.is_file():
        sidecar = read_sidecar(sidecar_path(matrix))
        found = matrix_regime(sidecar)
        matrix_runs, problems = read_matrix_runs(matrix)
        matrix_info.update(rows=len(matrix_runs), regime=found, problems=len(problems))
        if found != regime and not any_regime:
            notes.append(f"{matrix.name}: regime {found or 'not recorded'} is not the library's ({regime}): "
                         "its rows are not learned from")
        else:
            if found != regime:
                notes.append(f"{matrix.name}: regime {found or 'not recorded'}, not the library's: validated only")
            matrix_info["used"] = True
            runs = [Run(r["source"], r["target"], r["seed"], r["score"], r["baseline_score"], r.get("metric"))
                    for r in matrix_runs]
            from library.evaluation import majority_scores

            majority = majority_scores(sidecar)
    elif matrix is not None:
        notes.append(f"no transfer matrix at {matrix}")
    skipped = undefined_baselines(runs, majority)
    for t, why in skipped.items():
        notes.append(f"target {t} left out: {why}")
    runs = [r for r in runs if r.target not in skipped]

    features: dict[tuple[str, str], dict[str, float]] = {}
    target_hashes: dict[str, str] = {}
    matrix_targets = sorted({r.target for r in runs})
    results = rstore.results(regime=regime)
    usable = [r for r in results if r.features is not None and r.target_facts is not None and r.relative_gain is not None]
    found_targets = len([t for t in matrix_targets if t in tasks]) + len({r.target_hash for r in usable})
    if found_targets < min_targets:  # before any feature is computed: a refit with too little data stops at once
        raise LibraryError(
            f"too few measured targets in the library's regime ({found_targets}; leave-one-target-out needs at "
            f"least {min_targets}): {len(runs)} matrix run(s) at {matrix}, {len(usable)} recorded transfer "
            "result(s)" + "".join(f"; {n}" for n in notes))
    for i, target in enumerate(matrix_targets, start=1):
        task = tasks.get(target)
        if task is None:
            notes.append(f"matrix target {target} is not a library task: left out")
            continue
        if progress is not None:
            progress(f"features of {target} ({i}/{len(matrix_targets)})")
        facts = source_facts[target]
        rows = pair_features(facts, source_facts, library_rankings(service, task, use_rows))
        for source, f in rows.items():
            features[(target, source)] = f
        target_hashes[target] = task.data_hash

    other = rstore.count_results() - len(results)
    if other:
        notes.append(f"{other} recorded transfer result(s) of another encoder or regime kept but not learned from")
    for result in usable:
        key = f"{result.target} (yours {result.target_hash[:8]})"
        target_hashes[key] = result.target_hash
        features[(key, result.source)] = {k: float(v) if v is not None else math.nan
                                          for k, v in (result.features or {}).items() if k not in PRIOR_KEYS}
        for r in result.runs:
            runs.append(Run(result.source, key, r.get("seed"), float(r["score"]), float(r["baseline_score"]),
                            result.metric))
    runs = [r for r in runs if (r.target, r.source) in features]
    table = _table(runs, majority)
    examples = [Example(t, s, gain, features[(t, s)]) for t in table.targets() for s, gain in table.gains(t).items()]
    trained_on = {"regime": regime, "rows": len(examples), "targets": len(table.targets()),
                  "matrix": matrix_info, "matrix_rows_used": sum(1 for r in runs if "(yours" not in r.target),
                  "user_results": len(usable),
                  "results_max_id": max((r.id for r in rstore.results()), default=0),
                  "target_names": table.targets(), "esm_logme": use_rows}
    return TrainingData(examples, table, target_hashes, {n: f.to_dict() for n, f in source_facts.items()},
                        regime, trained_on, notes)


# -- models -------------------------------------------------------------------------------------------

def _gbm() -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=5,
                                         l2_regularization=1.0, random_state=0)


def _forest() -> Any:
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=200, min_samples_leaf=3, max_features=0.5, random_state=0, n_jobs=1)


def _ridge() -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                         Ridge(alpha=10.0))


def signed_log1p(y: np.ndarray) -> np.ndarray:
    return np.sign(y) * np.log1p(np.abs(y))


def signed_expm1(z: np.ndarray) -> np.ndarray:
    return np.sign(z) * np.expm1(np.abs(z))


def _forest_log() -> Any:
    """The forest on sign(g) log(1 + |g|) of the relative gain g (%): a target whose baseline is near zero
    (CoLA's MCC 1.4 turns +8.6 points into +600%) otherwise dominates the squared error of every split."""
    from sklearn.compose import TransformedTargetRegressor

    return TransformedTargetRegressor(regressor=_forest(), func=signed_log1p, inverse_func=signed_expm1,
                                      check_inverse=False)


def _quantile(q: float) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=150, learning_rate=0.05,
                                         max_leaf_nodes=8, min_samples_leaf=5, random_state=0)


CANDIDATES: dict[str, tuple[str, Callable[[], Any]]] = {
    "gbm": ("scikit-learn HistGradientBoostingRegressor (200 trees of 8 leaves, learning rate 0.05)", _gbm),
    "forest": ("scikit-learn RandomForestRegressor (200 trees, 3 rows per leaf)", _forest),
    "ridge": ("median imputation, standardisation, ridge regression (alpha 10)", _ridge),
    "forest_compact": ("the random forest without the per-component TaskEmb ranks (fewer features for few "
                       "targets)", _forest),
    "forest_compact_log": ("the compact forest fitted on sign(g) log(1 + |g|) of the relative gain (heavy tails "
                           "from near-zero baselines compressed; predictions mapped back)", _forest_log),
}


def _component_rank(name: str) -> bool:
    return name.startswith("taskemb_") and name.endswith("_rank") and name != "taskemb_rank"


def candidate_columns(candidate: str, names: Sequence[str]) -> list[int]:
    """The columns a candidate reads: a compact one leaves out the per-component TaskEmb ranks."""
    return [j for j, n in enumerate(names) if not ("_compact" in candidate and _component_rank(n))]


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@dataclass
class Prediction:
    expected: float
    low: float
    high: float
    p_helps: float
    reasons: list[dict[str, Any]] = field(default_factory=list)


def p_helps(expected: float, low: float, high: float) -> float:
    """P(gain > 0) under a normal with the prediction as mean and the interval's spread as its sd."""
    z = 2 * 1.2815515655446004  # the 10%..90% quantiles of a normal are +-1.28 sd
    sd = max((high - low) / z, 1e-6)
    return _normal_cdf(expected / sd)


@dataclass
class FittedRanker:
    """What a version stores (pickled): the chosen model, its interval models, the training gains (the
    prior at ranking time) and the sources' facts."""

    candidate: str
    features: list[str]
    model: Any
    low: Any
    high: Any
    gains: dict[str, dict[str, float]]
    target_hashes: dict[str, str]
    source_facts: dict[str, dict[str, Any]]
    medians: dict[str, float]
    regime: str
    widen: float = 0.0  # points added on each side of the quantile interval (conformal calibration)
    quantiles: tuple[float, float] = QUANTILES
    model_features: list[str] = field(default_factory=list)  # the model's columns (a compact one: fewer)

    @property
    def columns(self) -> list[str]:
        return self.model_features or self.features

    def prior_for(self, sources: Sequence[str], target_hash: str | None) -> dict[str, dict[str, float]]:
        """The prior over every training target, the target itself left out when it is one of them."""
        same = [t for t, h in self.target_hashes.items() if target_hash and h == target_hash]
        return prior_features(self.gains, sources, exclude=same)

    def predict(self, rows: Mapping[str, Mapping[str, float]], target_hash: str | None = None,
                reasons: int = 3) -> dict[str, Prediction]:
        names = sorted(rows)
        if not names:
            return {}
        prior = self.prior_for(names, target_hash)
        full = [{**rows[n], **prior[n]} for n in names]
        x, xm = _matrix(full, self.features), _matrix(full, self.columns)
        mean, low, high = self.model.predict(xm), self.low.predict(x), self.high.predict(x)
        out = {}
        effects = self._effects(xm, mean) if reasons else np.zeros_like(xm)
        for i, name in enumerate(names):
            lo = float(min(low[i], high[i], mean[i])) - self.widen
            hi = float(max(low[i], high[i], mean[i])) + self.widen
            order = np.argsort(-np.abs(effects[i]))[:reasons]
            why = [describe(self.columns[j], full[i], float(effects[i, j])) for j in order
                   if abs(effects[i, j]) > 1e-9]
            out[name] = Prediction(float(mean[i]), lo, hi, p_helps(float(mean[i]), lo, hi), why)
        return out

    def _effects(self, x: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """How much each feature moved each prediction: the prediction minus the prediction with that
        feature set to its training median (one feature at a time)."""
        n, k = x.shape
        batch = np.repeat(x, k, axis=0)
        for j in range(k):
            batch[j::k, j] = self.medians.get(self.columns[j], math.nan)
        moved = self.model.predict(batch).reshape(n, k)
        return mean[:, None] - moved


_RANK_WORDS = {"semb_rank": ("SEmb", "text domain"), "textemb_rank": ("TextEmb", "topic"),
               "taskemb_rank": ("TaskEmb", "task"), "ensemble_rank": ("ensemble", "by the embeddings"),
               "esm_logme_rank": ("ESM-LogME", "fit of your labels")}
_SCORES = {"semb_similarity": "SEmb similarity", "textemb_similarity": "TextEmb similarity",
           "taskemb_score": "TaskEmb score", "esm_logme": "ESM-LogME evidence"}


def _closeness(rank: float) -> str:
    return "closest" if rank <= 2 else "close" if rank <= 5 else "middling" if rank <= 10 else "distant"


def describe(feature: str, row: Mapping[str, float], effect: float) -> dict[str, Any]:
    """One reason in words, from the feature's value, with how many points it moved the expected gain:
    "closest text domain (SEmb rank 2; +1.3 pts)", "10,000 rows (+0.4 pts)"."""
    value = row.get(feature, math.nan)
    component = feature[len("taskemb_"):-len("_rank")] if feature.startswith("taskemb_") and \
        feature.endswith("_rank") and feature != "taskemb_rank" else None
    text: str
    if math.isnan(value):
        label = _RANK_WORDS.get(feature, (None,))[0] or _SCORES.get(feature) or feature
        text = f"no {label} for this source" if feature.startswith("esm_") else f"{label} unknown"
    elif feature in _RANK_WORDS or component is not None:
        label, what = _RANK_WORDS.get(feature) or (f"TaskEmb {component}", "task")
        text = f"{_closeness(value)} {what} ({label} rank {int(value)})"
    elif feature in _SCORES:
        text = f"{_SCORES[feature]} {value:.3f}"
    elif feature == "prior_gain":
        n = int(row.get("prior_targets", 0) or 0)
        text = (f"helps most targets ({value:+.1f}% on average over {n})" if value > 0
                else f"hurts other targets ({value:+.1f}% on average over {n})")
    elif feature == "prior_targets":
        text = f"measured on {int(value)} other target(s)"
    elif feature == "source_log_rows":
        text = f"{round(10 ** value - 1):,} rows"
    elif feature == "target_log_rows":
        text = f"your target's {round(10 ** value - 1):,} rows"
    elif feature == "same_type":
        text = "the same task type" if value else "a different task type"
    elif feature in ("source_labels", "target_labels"):
        who = "source" if feature.startswith("source") else "target"
        text = f"{who}: {int(value)} labels" if value else f"{who}: regression"
    elif feature in ("source_tokens_per_row", "target_tokens_per_row"):
        who = "source" if feature.startswith("source") else "target"
        text = f"{who}: {value:.0f} tokens per row"
    elif feature == "tokens_ratio_log2":
        text = "longer texts than yours" if value > 0 else "shorter texts than yours"
    else:
        text = feature
    moved = f"{effect:+.1f} pts"
    text = f"{text[:-1]}; {moved})" if text.endswith(")") else f"{text} ({moved})"
    return {"feature": feature, "value": None if math.isnan(value) else value, "effect": effect, "text": text}


def _fit_one(candidate: str, x: np.ndarray, y: np.ndarray) -> Any:
    model = CANDIDATES[candidate][1]()
    model.fit(x, y)
    return model


def _fold_rows(data: TrainingData, held_out: str | Collection[str] | None) -> tuple[list[dict[str, float]],
                                                                                   list[float], list[Example]]:
    """Training rows with the prior computed without the held-out target(s) and without the row's own target."""
    out = {held_out} if isinstance(held_out, str) else set(held_out or ())
    gains = {t: g for t, g in data.gains().items() if t not in out}
    rows, ys, kept = [], [], []
    for target in sorted(gains):
        own = [e for e in data.examples if e.target == target]
        prior = prior_features(gains, [e.source for e in own], exclude=(target,))
        for e in own:
            rows.append({**e.features, **prior[e.source]})
            ys.append(e.gain)
            kept.append(e)
    return rows, ys, kept


def _fold_design(data: TrainingData, names: Sequence[str], held_out: Collection[str], target: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[Example]]:
    """(x, y) from every target but `held_out`, and the rows of `target` (one of them) to predict, with
    the prior from the training targets only; columns with no value in training dropped."""
    rows, ys, _ = _fold_rows(data, held_out)
    x, y = _matrix(rows, names), np.asarray(ys)
    test = [e for e in data.examples if e.target == target]
    prior = prior_features({t: g for t, g in data.gains().items() if t not in held_out}, [e.source for e in test],
                           exclude=(target,))
    xt = _matrix([{**e.features, **prior[e.source]} for e in test], names)
    keep = _usable(x)
    return x[:, keep], y, xt[:, keep], [names[j] for j in keep], test


def _nested_choice(data: TrainingData, names: Sequence[str], candidates: Sequence[str], scope: Collection[str],
                   k_ndcg: int) -> dict[str, str]:
    """For each held-out target, the candidate that wins leave-one-target-out on the *other* targets alone
    (mean NDCG@k over those of them in `scope`, all of them when none is): the selection step itself
    validated, so the reported figure is not flattered by picking the best of several on the same folds."""
    targets = data.table.targets()
    chosen: dict[str, str] = {}
    for outer in targets:
        inner = [t for t in targets if t != outer]
        scored = [t for t in inner if t in scope] or inner
        totals = dict.fromkeys(candidates, 0.0)
        for t in scored:
            x, y, xt, kept, test = _fold_design(data, names, {outer, t}, t)
            gains = data.table.gains(t)
            for candidate in candidates:
                cols = candidate_columns(candidate, kept)
                mean = _fit_one(candidate, x[:, cols], y).predict(xt[:, cols])
                order = [e.source for _, e in sorted(zip(-mean, test, strict=True), key=lambda p: (p[0], p[1].source))]
                totals[candidate] += ndcg_at_k(order, gains, k_ndcg)
        chosen[outer] = max(candidates, key=lambda c: (totals[c], -list(candidates).index(c)))
    return chosen


def validate(data: TrainingData, candidates: Sequence[str] = tuple(CANDIDATES), k_ndcg: int = 5) -> dict[str, Any]:
    """Leave-one-target-out: for each target, every candidate is fitted on the other targets' rows (the
    prior, too, from those targets only) and ranks the held-out target's measured sources. Scored by
    `library.evaluation.evaluate` beside random, DataSize, the source prior and the unlearned methods'
    own rankings of the same pairs; plus the interval's coverage and how often the top-1 helps."""
    targets = data.table.targets()
    if len(targets) < 2:
        raise LibraryError(f"leave-one-target-out validation needs at least 2 measured targets, have {len(targets)}")
    predictions: dict[str, dict[str, dict[str, tuple[float, float, float]]]] = {c: {} for c in candidates}
    names = feature_names([e.features for e in data.examples] + [dict.fromkeys(PRIOR_KEYS, 0.0)])
    for target in targets:
        x, y, xt, kept, test = _fold_design(data, names, {target}, target)
        low, high = _fit_quantile(QUANTILES[0], x, y).predict(xt), _fit_quantile(QUANTILES[1], x, y).predict(xt)
        for candidate in candidates:
            cols = candidate_columns(candidate, kept)
            mean = _fit_one(candidate, x[:, cols], y).predict(xt[:, cols])
            predictions[candidate][target] = {e.source: (float(m), float(min(lo, hi, m)), float(max(lo, hi, m)))
                                              for e, m, lo, hi in zip(test, mean, low, high, strict=True)}
    nested: dict[str, str] = {}
    if len(candidates) > 1 and len(targets) >= 3:
        scope = {t for t, v in informativeness(data.table.runs, data.table.majority).items() if v.get("informative")}
        nested = _nested_choice(data, names, candidates, scope, k_ndcg)
        predictions[NESTED] = {t: predictions[nested[t]][t] for t in targets}

    def best_first(p: Mapping[str, tuple[float, float, float]]) -> list[str]:
        return sorted(p, key=lambda s: (-p[s][0], s))

    rankings: dict[str, dict[str, list[str]]] = {
        c: {t: best_first(p) for t, p in by_target.items()} for c, by_target in predictions.items()}
    for method in UNLEARNED:
        key = f"{method}_rank"
        ranked: dict[str, list[str]] = {}
        for target in targets:
            test = [e for e in data.examples if e.target == target]
            values = {e.source: e.features.get(key, math.nan) for e in test}
            if not test or all(math.isnan(v) for v in values.values()):
                break  # the method could not rank this target: it is left out of the comparison
            ranked[target] = sorted(values, key=lambda s: (math.isnan(values[s]), values[s], s))  # unranked last
        else:
            rankings[method] = ranked
    sizes = {s: int(round(10 ** f["source_log_rows"] - 1)) for e in data.examples
             for s, f in [(e.source, e.features)] if not math.isnan(f.get("source_log_rows", math.nan))}
    result = evaluate(data.table, rankings, k_ndcg=k_ndcg, source_sizes=sizes)
    scope = result["headline"]["targets"]
    info = result["informativeness"]
    extra: dict[str, dict[str, Any]] = {}
    nominal = QUANTILES[1] - QUANTILES[0]
    for candidate, by_target in predictions.items():
        # how far outside its interval each held-out pair fell (conformalised quantile regression's score)
        outside = {t: [max(lo - data.table.gains(t)[s], data.table.gains(t)[s] - hi)
                       for s, (_, lo, hi) in by_target[t].items()] for t in by_target}
        raw = [e <= 0 for t in outside for e in outside[t]]
        calibrated = []
        for t in outside:  # the widening learned from the other targets only, then tried on this one
            others = [e for u in outside if u != t for e in outside[u]]
            widen = float(np.quantile(others, nominal, method="higher")) if others else 0.0
            calibrated += [e <= widen for e in outside[t]]
        everything = [e for t in outside for e in outside[t]]
        errors = [abs(m - data.table.gains(t)[s]) for t in by_target for s, (m, _, _) in by_target[t].items()]
        top1 = [data.table.gains(t)[rankings[candidate][t][0]] > 0 for t in scope]
        extra[candidate] = {"coverage": fmean(calibrated) if calibrated else None,
                            "coverage_uncalibrated": fmean(raw) if raw else None,
                            "widen": float(np.quantile(everything, nominal, method="higher")) if everything else 0.0,
                            "mae": fmean(errors) if errors else None,
                            "top1_helps": fmean(top1) if top1 else None, "top1_targets": len(top1)}
    baselines_top1 = {}
    for method in result["methods"]:
        if method in predictions or method == "random":
            continue
        order = result["source_prior"] if method == "source_prior" else None
        tops = []
        for t in scope:
            first = (order[t]["ranking"][0] if order is not None else
                     rankings[method][t][0] if method in rankings else None)
            if method == "datasize":
                from library.evaluation import datasize_order

                first = datasize_order(data.table.sources(t), sizes)[0]
            if first is not None:
                tops.append(data.table.gains(t)[first] > 0)
        baselines_top1[method] = fmean(tops) if tops else None
    return {"k_ndcg": k_ndcg, "targets": targets, "headline": result["headline"],
            "methods": {m: {k: v for k, v in s.items() if k != "per_target"} | {"per_target": {
                t: v["ndcg"] for t, v in s["per_target"].items()}} for m, s in result["methods"].items()},
            "candidates": extra, "top1_helps": baselines_top1,
            "nominal_coverage": QUANTILES[1] - QUANTILES[0], "nested_choice": nested,
            "informative_targets": [t for t, v in info.items() if v.get("informative")],
            "skipped_targets": result["skipped_targets"]}


def _fit_quantile(q: float, x: np.ndarray, y: np.ndarray) -> Any:
    model = _quantile(q)
    model.fit(x, y)
    return model


def fit_final(data: TrainingData, candidate: str, widen: float = 0.0) -> FittedRanker:
    """The chosen candidate (and the interval's quantile models, widened by `widen` points: the
    leave-one-target-out calibration) on every row."""
    rows, ys, _ = _fold_rows(data, None)
    names = feature_names(rows + [dict.fromkeys(PRIOR_KEYS, 0.0)])
    x, y = _matrix(rows, names), np.asarray(ys)
    keep = _usable(x)
    names, x = [names[j] for j in keep], x[:, keep]
    medians = {n: float(np.nanmedian(x[:, j])) if np.isfinite(x[:, j]).any() else math.nan
               for j, n in enumerate(names)}
    cols = candidate_columns(candidate, names)
    return FittedRanker(candidate=candidate, features=names, model=_fit_one(candidate, x[:, cols], y),
                        low=_fit_quantile(QUANTILES[0], x, y), high=_fit_quantile(QUANTILES[1], x, y),
                        gains=data.gains(), target_hashes=dict(data.target_hashes), source_facts=data.source_facts,
                        medians=medians, regime=data.regime, widen=max(0.0, widen),
                        model_features=[names[j] for j in cols])


def dumps(model: FittedRanker) -> bytes:
    buffer = io.BytesIO()
    pickle.dump(model, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    return buffer.getvalue()


_LOADED: dict[tuple[str, int], FittedRanker] = {}


def active_ranker(store: RankerStore) -> tuple[RankerVersion | None, FittedRanker | None]:
    """The active version and its model (unpickled once per process and version)."""
    version = store.active_version()
    if version is None:
        return None, None
    key = (str(store.engine.url), version.id)
    if key not in _LOADED:
        import sklearn

        if version.sklearn_version != sklearn.__version__:
            log.warning("ranker version %s was fitted with scikit-learn %s, this is %s", version.id,
                        version.sklearn_version, sklearn.__version__)
        blob = store.model_bytes(version.id)
        if blob is None:
            return version, None
        _LOADED[key] = pickle.loads(blob)  # noqa: S301 - our own database's bytes, written by `dumps`
    return version, _LOADED[key]


# -- fitting a version --------------------------------------------------------------------------------

@dataclass
class FitReport:
    version: RankerVersion | None
    activated: bool
    validation: dict[str, Any] | None
    notes: list[str]
    candidate: str | None = None
    compared_with: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version.summary() if self.version else None, "activated": self.activated,
                "candidate": self.candidate, "compared_with": self.compared_with, "notes": self.notes,
                "validation": self.validation}


def headline_ndcg(validation: Mapping[str, Any], method: str) -> float | None:
    entry = validation.get("methods", {}).get(method)
    return float(entry["ndcg"]) if entry else None


def fit_ranker(service: Any, rstore: RankerStore, matrix: Path | None, *, use_rows: bool = True,
               progress: Callable[[str], None] | None = None) -> FitReport:
    """Gather the rows, validate every candidate leave-one-target-out, fit the best on every row, store it
    as a new version and activate it when it validates no worse than the active version's candidate on
    the same rows (the first version has nothing to compare with and is activated; its margin over the
    source prior is recorded in `compared_with`)."""
    data = gather(service, rstore, matrix, use_rows=use_rows, progress=progress, min_targets=2)
    if len(data.table.targets()) < 2:
        matrix_info = data.trained_on["matrix"]
        seen = (f"{matrix_info['rows']} matrix run(s) at {matrix_info['path']}, {data.trained_on['user_results']} "
                "recorded transfer result(s)")
        raise LibraryError(f"too few measured targets in the library's regime ({len(data.table.targets())}; "
                           f"leave-one-target-out needs at least 2): {'; '.join([seen, *data.notes])}")
    if progress is not None:
        progress(f"validating {len(CANDIDATES)} candidates on {len(data.examples)} pairs, "
                 f"{len(data.table.targets())} targets")
    validation = validate(data)
    scores = {c: headline_ndcg(validation, c) or 0.0 for c in CANDIDATES}
    best = max(scores, key=lambda c: (scores[c], -list(CANDIDATES).index(c)))
    active = rstore.active_version()
    compared: dict[str, Any] | None = None
    if active is not None:
        theirs = active.spec.get("candidate")
        their_score = scores.get(theirs) if theirs in scores else None
        compared = {"version": active.id, "candidate": theirs, "ndcg_same_rows": their_score, "ndcg_new": scores[best]}
        activate = their_score is None or scores[best] >= their_score - 1e-9
    else:
        prior = headline_ndcg(validation, "source_prior") or 0.0
        compared = {"version": None, "source_prior_ndcg": prior, "ndcg_new": scores[best]}
        activate = True
    if progress is not None:
        progress(f"fitting {best} on every row")
    model = fit_final(data, best, float(validation["candidates"][best].get("widen") or 0.0))
    import sklearn

    validation["chosen"] = best
    validation["criteria"] = criteria(validation)
    version = rstore.add_version(
        model=dumps(model), activate=activate, status="kept" if activate else "rejected", regime=data.regime,
        sklearn_version=sklearn.__version__,
        spec={"candidate": best, "description": CANDIDATES[best][0], "features": model.features,
              "quantiles": list(QUANTILES), "default": bool(validation["criteria"].get("may_be_default"))},
        trained_on=data.trained_on | {"notes": data.notes}, validation=validation,
        note="" if activate else f"validated worse than version {active.id if active else '-'} on the same rows")
    return FitReport(version, activate, validation, data.notes, best, compared)


def validate_matrix(service: Any, rstore: RankerStore, matrix: Path, *, use_rows: bool = True,
                    any_regime: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Leave-one-target-out figures for a matrix without storing a version (`taskrank ranker validate`):
    with `any_regime`, also a matrix of another regime (an older one), which a fit never learns from."""
    data = gather(service, rstore, matrix, use_rows=use_rows, progress=progress, any_regime=any_regime,
                  min_targets=2)
    validation = validate(data)
    scores = {c: headline_ndcg(validation, c) or 0.0 for c in CANDIDATES}
    validation["chosen"] = max(scores, key=lambda c: (scores[c], -list(CANDIDATES).index(c)))
    validation["criteria"] = criteria(validation)
    validation["notes"] = data.notes
    validation["trained_on"] = data.trained_on
    return validation


def criteria(validation: Mapping[str, Any]) -> dict[str, Any]:
    """The learned ranker against the bars it must clear (the issue's "done when"): NDCG@5 over DataSize
    (+0.10) and the source prior (+0.05), top-1 helps on >= 80% of the headline targets, and whether it beats
    every unlearned method (then `learned` may become the default method).

    Judged on the nested row (each held-out target ranked by the candidate chosen without it) when there
    is one; the chosen candidate's own row picks the best of several on the same folds, which flatters it.
    """
    chosen = validation.get("chosen")
    methods = validation.get("methods", {})
    if chosen not in methods:
        return {}
    judged = NESTED if NESTED in methods else chosen
    mine = float(methods[judged]["ndcg"])
    unlearned = {m: float(v["ndcg"]) for m, v in methods.items()
                 if m not in CANDIDATES and m not in (NESTED, "random")}
    numbers = validation.get("candidates", {}).get(judged, {})
    over = {m: mine - v for m, v in unlearned.items()}
    beats = bool(over) and all(v > 0 for v in over.values())
    headline = len(validation.get("headline", {}).get("targets", []))
    return {"candidate": chosen, "judged_on": judged, "ndcg": mine,
            "ndcg_chosen_same_folds": float(methods[chosen]["ndcg"]), "over": over,
            "datasize_margin_ok": over.get("datasize", -1.0) >= 0.10,
            "source_prior_margin_ok": over.get("source_prior", -1.0) >= 0.05,
            "top1_helps": numbers.get("top1_helps"), "top1_ok": (numbers.get("top1_helps") or 0.0) >= 0.8,
            "coverage": numbers.get("coverage"), "nominal_coverage": validation.get("nominal_coverage"),
            "beats_every_unlearned": beats, "headline_targets": headline, "min_default_targets": MIN_DEFAULT_TARGETS,
            "may_be_default": beats and headline >= MIN_DEFAULT_TARGETS}


def default_method(store: RankerStore) -> str:
    """The service's default ranking method: `learned` once its active version may be (`criteria`), else
    the unlearned method the shipped matrix chose (`library.methods.DEFAULT_METHOD`)."""
    from library.methods import DEFAULT_METHOD

    return NAME if store.active_is_default() else DEFAULT_METHOD


def default_for(store: RankerStore, task_type: str, library: Any) -> tuple[str, str | None]:
    """(method, note) for a target of `task_type` ranked without a method against `library` (a
    `LibraryStore`): `default_method`, or the incumbent where that method cannot rank it (the note says why)."""
    from library.default_choice import obstacle, resolve
    from library.methods import RANKING_METHODS

    chosen = default_method(store)
    if chosen == NAME:
        return chosen, None
    return resolve(chosen, obstacle(RANKING_METHODS.get(chosen), task_type, library))


def validation_table(validation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per method (candidates first): NDCG@k, rho, regret, top-1 helps, interval coverage."""
    rows = []
    candidates = validation.get("candidates", {})
    for method, m in validation.get("methods", {}).items():
        extra = candidates.get(method, {})
        rows.append({"method": method, "ndcg": m.get("ndcg"), "rho": m.get("rho"), "regret": m.get("regret"),
                     "top1_helps": extra.get("top1_helps", validation.get("top1_helps", {}).get(method)),
                     "coverage": extra.get("coverage"), "mae": extra.get("mae")})
    rows.sort(key=lambda r: (r["method"] not in candidates, -(r["ndcg"] or 0)))
    return rows
