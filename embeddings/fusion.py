"""Stage 2 of the adapter-based multi-source methods: combine frozen adapters for a target task.

All of them use the `adapters` library's `Fuse` composition over the frozen adapters, at the
output adapter position of every layer. `BottleneckLayer.compose_fuse` runs each fused adapter on
the layer's state and calls the layer's fusion module as

    fusion(query, key, value, residual, output_attentions=False)

with `query` the sub-layer output (B, T, H), `key` = `value` the adapters' up-projections stacked
(B, T, N, H) and `residual` the adapter residual (B, T, H); what it returns goes through the
layer's own residual + LayerNorm. AdapterFusion is the library's own module (`BertFusion`,
"dynamic": query, key and value projections, value regularised towards the identity). ScaLearn and
PEMT are modules with the same call signature that replace it, which is how the ScaLearn authors
built theirs on adapter-transformers:

* ScaLearn (Frohmann et al. 2023): output = sum_i omega_i * up_i + residual, with omega a vector
  (N, H) per layer (ScaLearn), a scalar (N, 1) per layer (ScaLearnUniform), or one of those shared
  by all layers (ScaLearn++, ScaLearnUniform++), initialised at 1/N (plus N(0, 0.001) noise).
* PEMT (Lin et al. 2024): a mixture of the frozen source adapters (the experts) with a gate per
  layer, softmax(W mean_t(query) + b) over the sources, whose bias starts at the log of a
  correlation prior, plus a trainable target adapter added unconditionally:
  output = sum_s g_s up_s + up_target + residual. The loss adds KL(prior || mean gate) (the gate
  stays guided by the task correlation) and the mean entropy of each example's gate (the task
  sparsity term). The prior is taskrank's own source scores (the ranking's fused similarity),
  standardised over the chosen sources and passed through softmax(z / temperature).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from embeddings.encoders import Encoder
from embeddings.registry import ADAPTER_METHODS
from embeddings.source_adapters import AdapterOptions, load_adapter_state, quiet_adapters, with_adapters

SCALEARN_VARIANTS = {  # method -> (omega per hidden unit?, one omega per layer?)
    "scalearn": (True, True),
    "scalearn_uniform": (False, True),
    "scalearn_plus": (True, False),
    "scalearn_uniform_plus": (False, False),
}
assert ADAPTER_METHODS == (*SCALEARN_VARIANTS, "adapterfusion", "pemt")  # the registry's order
TARGET = "target"  # name of the target's adapter in the fused model


def source_adapter_names(count: int) -> list[str]:
    """Adapter names inside the fused model (free of '.' and ','): s0, s1, ..."""
    return [f"s{i}" for i in range(count)]


class ScaLearnFusion(nn.Module):
    """ScaLearn's combination: a learned scaling of each adapter's output, summed (no attention, no softmax)."""

    def __init__(self, omega: nn.Parameter) -> None:
        super().__init__()
        self.omega = omega  # (N, H) or (N, 1); the same Parameter object in every layer for the ++ variants

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, residual: torch.Tensor,
                output_attentions: bool = False) -> Any:
        combined = (value * self.omega.to(value.dtype)).sum(dim=2) + residual
        return (combined, self.omega.detach().float().cpu().numpy()) if output_attentions else combined


def init_omega(count: int, hidden_size: int, per_unit: bool) -> nn.Parameter:
    """1/N plus N(0, 0.001) noise, as ScaLearn's 'avg' initialisation."""
    shape = (count, hidden_size if per_unit else 1)
    return nn.Parameter(torch.normal(1.0 / count, 0.001, shape))


class MaskHolder:
    """The attention mask of the current forward pass, for modules that pool over tokens."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)


class PemtGate(nn.Module):
    """PEMT's correlation-guided mixture over frozen source adapters, plus the target adapter's output.

    The adapters' outputs arrive as `value` (B, T, S + 1, H): the S sources first, the target last.
    """

    def __init__(self, hidden_size: int, log_prior: torch.Tensor, holder: MaskHolder) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden_size, log_prior.numel())
        nn.init.normal_(self.gate.weight, std=0.02)
        with torch.no_grad():
            self.gate.bias.copy_(log_prior)
        self.holder = holder
        self.last_gate: torch.Tensor | None = None  # (B, S), kept for the auxiliary loss and reporting

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, residual: torch.Tensor,
                output_attentions: bool = False) -> Any:
        mask = self.holder.mask
        if mask is None or mask.shape[:2] != query.shape[:2]:
            pooled = query.mean(dim=1)
        else:
            weights = mask.to(query.dtype).unsqueeze(-1)
            pooled = (query * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        gate = torch.softmax(self.gate(pooled.float()), dim=-1)  # (B, S)
        self.last_gate = gate
        sources = value[:, :, :-1, :]
        mixed = (sources * gate[:, None, :, None].to(value.dtype)).sum(dim=2)
        combined = mixed + value[:, :, -1, :] + residual
        return (combined, gate.detach().float().cpu().numpy()) if output_attentions else combined


def correlation_prior(scores: Sequence[float] | None, count: int, temperature: float) -> torch.Tensor:
    """softmax(z / temperature) of the standardised source scores; uniform without scores."""
    if scores is None or len(scores) != count or count < 2:
        return torch.full((count,), 1.0 / count)
    values = torch.tensor([float(s) for s in scores], dtype=torch.float64)
    spread = values.std(unbiased=False)
    if not torch.isfinite(spread) or spread <= 0:
        return torch.full((count,), 1.0 / count)
    z = (values - values.mean()) / spread
    return torch.softmax(z / temperature, dim=0).float()


@dataclass
class FusedBody:
    """A prepared encoder for fine_tune(body=...): what trains, and how to read its combination weights."""

    body: nn.Module
    method: str
    adapter_names: list[str]  # in Fuse order (the target's last where it takes part)
    modules: list[nn.Module] = field(default_factory=list)  # the per-layer fusion modules
    auxiliary: Any = None  # Callable[[model], Tensor | None]
    holder: MaskHolder | None = None


def build_fused_body(method: str, encoder: Encoder, source_states: list[dict[str, torch.Tensor]],
                     target_state: dict[str, torch.Tensor] | None, options: AdapterOptions, *,
                     prior: torch.Tensor | None = None, prior_weight: float = 0.0,
                     sparsity_weight: float = 0.0) -> FusedBody:
    """The encoder with the frozen source adapters (and target adapter) fused by `method`.

    Only the combination trains: ScaLearn's omegas, AdapterFusion's query/key/value, PEMT's gates
    and its target adapter (fresh). The target adapter from stage 1 (`target_state`) takes part,
    frozen, in ScaLearn and AdapterFusion.
    """
    from adapters.composition import Fuse

    if method not in ADAPTER_METHODS:
        raise ValueError(f"unknown adapter method {method!r}; one of {', '.join(ADAPTER_METHODS)}")
    if not source_states:
        raise ValueError("at least one source adapter")
    names = source_adapter_names(len(source_states))
    if method != "pemt" and target_state is None:
        raise ValueError(f"{method} fuses the target's own adapter: give target_state")
    fused = [*names, TARGET]
    body: Any = with_adapters(encoder, fused, options)  # an AdapterHub model (untyped methods)
    for name, state in zip(names, source_states, strict=True):
        load_adapter_state(body, name, state)
    if method != "pemt":
        assert target_state is not None
        load_adapter_state(body, TARGET, target_state)
    setup = Fuse(*fused)
    body.add_adapter_fusion(setup, config="dynamic")
    with quiet_adapters():
        body.train_adapter_fusion(setup)  # freezes everything but the fusion layers; activates the Fuse
    holders: list[Any] = [m for m in body.modules()
                          if hasattr(m, "adapter_fusion_layer") and setup.name in m.adapter_fusion_layer]
    hidden = encoder.hidden_size
    result = FusedBody(body=body, method=method, adapter_names=fused)
    if method == "adapterfusion":
        result.modules = [h.adapter_fusion_layer[setup.name] for h in holders]
        result.auxiliary = lambda model: model.encoder.get_fusion_regularization_loss()
        return result
    if method in SCALEARN_VARIANTS:
        per_unit, per_layer = SCALEARN_VARIANTS[method]
        shared = None if per_layer else init_omega(len(fused), hidden, per_unit)
        for holder in holders:
            omega = init_omega(len(fused), hidden, per_unit) if per_layer else shared
            holder.adapter_fusion_layer[setup.name] = ScaLearnFusion(omega)  # type: ignore[arg-type]
            result.modules.append(holder.adapter_fusion_layer[setup.name])
        return result
    # PEMT: the target adapter trains with the gates
    if prior is None:
        prior = torch.full((len(names),), 1.0 / len(names))
    mask_holder = MaskHolder()
    body.register_forward_pre_hook(mask_holder.hook, with_kwargs=True)
    log_prior = prior.clamp(min=1e-6).log()
    for holder in holders:
        holder.adapter_fusion_layer[setup.name] = PemtGate(hidden, log_prior, mask_holder)
        result.modules.append(holder.adapter_fusion_layer[setup.name])
    for param_name, param in body.named_parameters():
        if f".adapters.{TARGET}." in param_name:
            param.requires_grad = True
    body.to(encoder.device)
    gates = [cast(PemtGate, module) for module in result.modules]
    target_prior = prior.to(encoder.device)

    def pemt_loss(model: nn.Module) -> torch.Tensor | None:
        total = None
        for gate_module in gates:
            gate = gate_module.last_gate
            if gate is None:
                continue
            mean = gate.mean(dim=0).clamp(min=1e-9)
            kl = (target_prior * (target_prior.clamp(min=1e-9).log() - mean.log())).sum()
            entropy = -(gate * gate.clamp(min=1e-9).log()).sum(dim=-1).mean()
            term = prior_weight * kl + sparsity_weight * entropy
            total = term if total is None else total + term
        return None if total is None else total / len(gates)

    result.auxiliary = pemt_loss
    result.holder = mask_holder
    return result


def scalearn_parameter_count(method: str, sources: int, layers: int, hidden_size: int) -> int:
    """Trained parameters of a ScaLearn variant, the head excluded: N = sources + the target adapter.

    ScaLearn L*N*H, ScaLearnUniform L*N, ScaLearn++ N*H, ScaLearnUniform++ N.
    """
    per_unit, per_layer = SCALEARN_VARIANTS[method]
    return (layers if per_layer else 1) * (sources + 1) * (hidden_size if per_unit else 1)


def scalearn_weights(fused: FusedBody) -> tuple[list[float], list[list[float]]]:
    """Per adapter: the mean scale over layers (and units), and the per-layer means (layer, adapter)."""
    per_layer = [cast(ScaLearnFusion, module).omega.detach().float().mean(dim=1).cpu().tolist()
                 for module in fused.modules]
    count = len(per_layer[0])
    means = [sum(layer[i] for layer in per_layer) / len(per_layer) for i in range(count)]
    return means, per_layer


@torch.inference_mode()
def mean_fusion_weights(fused: FusedBody, batches: Sequence[dict[str, torch.Tensor]],
                        autocast: Any) -> tuple[list[float], list[list[float]]]:
    """AdapterFusion's attention or PEMT's gate, averaged over the given (dev) batches' real tokens/examples.

    Returns the mean weight per fused adapter (AdapterFusion) or per source (PEMT), each summing to one,
    and the per-layer means.
    """
    body = fused.body
    body.eval()
    sums: list[torch.Tensor] | None = None
    count = 0.0
    for inputs in batches:
        mask = inputs["attention_mask"].float()
        with autocast:
            if fused.method == "adapterfusion":
                output = body(**inputs, output_adapter_fusion_attentions=True)
                by_layer = output["adapter_fusion_attentions"][",".join(fused.adapter_names)]
                layer_weights = []
                for layer in sorted(by_layer):
                    probs = torch.as_tensor(by_layer[layer]["output_adapter"]).float()  # (B, T, N)
                    probs = (probs * mask.cpu().unsqueeze(-1)).sum(dim=(0, 1))
                    layer_weights.append(probs)
                weight = float(mask.sum())
            else:
                body(**inputs)
                layer_weights = [cast(torch.Tensor, cast(PemtGate, module).last_gate).float().sum(dim=0).cpu()
                                 for module in fused.modules]
                weight = float(mask.shape[0])
        sums = layer_weights if sums is None else [a + b for a, b in zip(sums, layer_weights, strict=True)]
        count += weight
    if sums is None or count == 0:
        raise ValueError("no batches to average the fusion weights over")
    per_layer = [(s / count).tolist() for s in sums]
    width = len(per_layer[0])
    means = [sum(layer[i] for layer in per_layer) / len(per_layer) for i in range(width)]
    total = sum(means)
    return [m / total if total > 0 and math.isfinite(total) else m for m in means], per_layer
