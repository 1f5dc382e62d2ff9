"""MiniVLA's VQ action tokenizer: a VQ-BeT residual-VQ autoencoder over action chunks, and its token-id mapping.

Design choice: the published tokenizer imports the ``vqvae`` package of VQ-BeT (and ``vector_quantize_pytorch``)
only to run ``decoder(sum_q codebook_q[code_q])``. Inference needs nothing more than two small MLPs and the
codebooks, so we hold exactly those as plain modules with the published state-dict keys (``encoder.{0,2}``,
``fc`` per MLP; codebooks read from ``vq_embedding["layers.{q}._codebook.embed"]`` [1, n_embed, latent]) and skip
the training machinery (EMA updates, dead-code expiry). ``encode`` (nearest codeword per residual stage) exists
for tests and for building SFT targets.

Token ids (as ``libero_vq_extra_action_tokenizer``): ``id = len(tokenizer) - 1 - code``, so codes 0..127 are
``<|extra_255|>`` .. ``<|extra_128|>``; decode ``code = clip(len(tokenizer) - 1 - id, 0, n_embed - 1)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor, nn

VQ_CONFIG = "config.json"
VQ_WEIGHTS = Path("checkpoints") / "model.pt"


@dataclass(frozen=True)
class VQConfig:
    """The VqVae kwargs in ``pretrain_vq/<run>/config.json`` that shape the weights."""

    chunk: int  # input_dim_h: future steps per chunk (8)
    action_dim: int  # input_dim_w: action dims per step (7)
    latent_dim: int = 512  # n_latent_dims
    n_embed: int = 128  # vqvae_n_embed: entries per codebook
    groups: int = 7  # vqvae_groups: residual codebooks = tokens per chunk
    hidden_dim: int = 128
    num_layers: int = 1  # extra hidden Linear+ReLU layers in each MLP
    act_scale: float = 1.0  # decoder output is multiplied by it (inputs divided)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = VQ_CONFIG) -> VQConfig:
        missing = [k for k in ("input_dim_h", "input_dim_w") if k not in d]
        if missing:
            raise ValueError(f"{source}: missing {missing}; expected a VQ-BeT VqVae config (pretrain_vq run dir)")
        cfg = cls(
            chunk=int(d["input_dim_h"]),
            action_dim=int(d["input_dim_w"]),
            latent_dim=int(d.get("n_latent_dims", 512)),
            n_embed=int(d.get("vqvae_n_embed", 16)),
            groups=int(d.get("vqvae_groups", 2)),
            hidden_dim=int(d.get("hidden_dim", 128)),
            num_layers=int(d.get("num_layers", 1)),
            act_scale=float(d.get("act_scale", 1.0)),
            raw=dict(d),
        )
        if min(cfg.chunk, cfg.action_dim, cfg.latent_dim, cfg.n_embed, cfg.groups, cfg.hidden_dim) < 1:
            raise ValueError(f"{source}: VQ sizes must be positive, got {cfg}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.raw)
        out.update(
            input_dim_h=self.chunk, input_dim_w=self.action_dim, n_latent_dims=self.latent_dim,
            vqvae_n_embed=self.n_embed, vqvae_groups=self.groups, hidden_dim=self.hidden_dim,
            num_layers=self.num_layers, act_scale=self.act_scale,
        )
        return out


class VQMLP(nn.Module):
    """VQ-BeT ``EncoderMLP``: Linear+ReLU, ``num_layers`` x (Linear+ReLU), then a plain Linear ``fc``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, num_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.ReLU()]
        for _ in range(num_layers):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.encoder = nn.Sequential(*layers)
        self.fc = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.encoder(x))  # type: ignore[no-any-return]


class ActionVQ(nn.Module):
    """Residual VQ over flattened (time-major) action chunks: [B, chunk, A] <-> codes [B, groups]."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        flat = config.chunk * config.action_dim
        self.encoder = VQMLP(flat, config.latent_dim, config.hidden_dim, config.num_layers)
        self.decoder = VQMLP(config.latent_dim, flat, config.hidden_dim, config.num_layers)
        self.codebooks = nn.Parameter(torch.zeros(config.groups, config.n_embed, config.latent_dim))  # [G,K,Z]

    def latent_from_codes(self, codes: Tensor) -> Tensor:
        """codes [B, G] long -> latent [B, Z] = sum_q codebooks[q, codes[:, q]]."""
        if codes.ndim != 2 or codes.shape[1] != self.config.groups:
            raise ValueError(f"codes must be [B, {self.config.groups}], got {tuple(codes.shape)}")
        q = torch.arange(self.config.groups, device=codes.device)
        return self.codebooks[q[None, :], codes].sum(dim=1)  # [B,G,Z] -> [B,Z]

    def decode_codes(self, codes: Tensor) -> Tensor:
        """codes [B, G] -> normalised action chunk [B, chunk, A] (time-major, as VqVae.get_action_from_latent)."""
        out = self.decoder(self.latent_from_codes(codes)) * self.config.act_scale  # [B, chunk*A]
        return out.reshape(codes.shape[0], self.config.chunk, self.config.action_dim)

    def encode(self, actions: Tensor) -> Tensor:
        """Normalised chunks [B, chunk, A] -> codes [B, G] (nearest codeword of each residual, Euclidean)."""
        residual = self.encoder(actions.reshape(actions.shape[0], -1) / self.config.act_scale)  # [B,Z]
        codes = []
        for q in range(self.config.groups):
            idx = torch.cdist(residual, self.codebooks[q]).argmin(dim=-1)  # [B]
            codes.append(idx)
            residual = residual - self.codebooks[q][idx]
        return torch.stack(codes, dim=1)


class VQActionTokenizer:
    """Vocabulary ids <-> VQ codes. Same ``first_token_id`` / ``n_bins`` / ``token_ids`` surface as ActionTokenizer."""

    def __init__(self, vocab_size: int, n_embed: int) -> None:
        if vocab_size <= n_embed:
            raise ValueError(f"vocab_size {vocab_size} must exceed the codebook size {n_embed}")
        self.vocab_size = int(vocab_size)  # len(tokenizer)
        self.n_bins = int(n_embed)

    @property
    def first_token_id(self) -> int:
        return self.vocab_size - self.n_bins

    def token_ids(self) -> NDArray[np.int64]:
        return np.arange(self.first_token_id, self.vocab_size, dtype=np.int64)

    def codes_to_ids(self, codes: ArrayLike) -> NDArray[np.int64]:
        c = np.asarray(codes, dtype=np.int64)
        if c.size and (c.min() < 0 or c.max() >= self.n_bins):
            raise ValueError(f"VQ codes must be in [0, {self.n_bins}), got [{c.min()}, {c.max()}]")
        return (self.vocab_size - 1 - c).astype(np.int64)

    def ids_to_codes(self, token_ids: ArrayLike) -> NDArray[np.int64]:
        t = np.asarray(token_ids, dtype=np.int64)
        return np.clip(self.vocab_size - 1 - t, 0, self.n_bins - 1).astype(np.int64)


# ------------------------------------------------------------------------------------------------ files
def _state_from_file(sd: Mapping[str, Any], config: VQConfig, path: Path) -> dict[str, Tensor]:
    missing = [k for k in ("encoder", "decoder", "vq_embedding") if k not in sd]
    if missing:
        raise ValueError(f"{path}: missing {missing}; expected VQ-BeT {{encoder, decoder, vq_embedding}} state dicts")
    out = {f"encoder.{k}": v for k, v in sd["encoder"].items()}
    out.update({f"decoder.{k}": v for k, v in sd["decoder"].items()})
    books = []
    for q in range(config.groups):
        key = f"layers.{q}._codebook.embed"
        if key not in sd["vq_embedding"]:
            raise ValueError(f"{path}: vq_embedding has no {key!r} (config says {config.groups} codebooks)")
        books.append(sd["vq_embedding"][key].reshape(config.n_embed, config.latent_dim))  # [1,K,Z] -> [K,Z]
    out["codebooks"] = torch.stack(books)
    return out


def load_action_vq(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> ActionVQ:
    """Read a ``pretrain_vq`` run directory (``config.json`` + ``checkpoints/model.pt``) -> ActionVQ (fp32, eval)."""
    d = Path(directory)
    if not (d / VQ_CONFIG).is_file() or not (d / VQ_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{d}: not a VQ action-tokenizer directory (needs {VQ_CONFIG} and {VQ_WEIGHTS}); pass vq_path= the "
            "pretrain_vq run directory (local or 'org/repo/subfolder' on the Hub)"
        )
    try:
        config = VQConfig.from_dict(json.loads((d / VQ_CONFIG).read_text()), str(d / VQ_CONFIG))
    except json.JSONDecodeError as e:
        raise ValueError(f"{d / VQ_CONFIG} is not valid JSON: {e}") from e
    raw = torch.load(d / VQ_WEIGHTS, map_location="cpu", weights_only=True)
    model = ActionVQ(config)
    state = _state_from_file(raw, config, d / VQ_WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{d / VQ_WEIGHTS} does not match {d / VQ_CONFIG}: {e}") from e
    return model.to(device).eval()


def vq_file_state(model: ActionVQ) -> dict[str, Any]:
    """The published ``model.pt`` dict for ``model`` (no optimizer state: it is only needed to resume training)."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "encoder": {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")},
        "decoder": {k.removeprefix("decoder."): v for k, v in sd.items() if k.startswith("decoder.")},
        "vq_embedding": {
            f"layers.{q}._codebook.embed": sd["codebooks"][q][None].clone() for q in range(model.config.groups)
        },
    }


def write_vq_files(model: ActionVQ, directory: Path) -> None:
    """Write ``config.json`` + ``checkpoints/model.pt`` into ``directory`` (inside a caller's atomic directory)."""
    (directory / VQ_WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    (directory / VQ_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    torch.save(vq_file_state(model), directory / VQ_WEIGHTS)


def save_action_vq(model: ActionVQ, out_dir: str | os.PathLike[str]) -> Path:
    """Write a ``pretrain_vq`` run directory atomically (it appears complete or not at all)."""
    from crane_x7_vla.utils.atomic import atomic_directory

    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        write_vq_files(model, tmp)
    return out
