"""Loading and saving OpenVLA checkpoints in the published Hugging Face layout (no ``trust_remote_code``).

Sources: a local directory (``model.safetensors`` or sharded ``model-0000N-of-0000M.safetensors`` + index), a Hub id
(``huggingface_hub.snapshot_download``: the normal cache is reused, ``HF_TOKEN`` / ``hf_token`` honoured, and
``HF_HUB_OFFLINE`` read at call time), or a PEFT LoRA adapter directory (its ``base_model_name_or_path``, or the
checkpoint itself when the adapter sits in ``<ckpt>/lora_adapters/``). Adapters are merged for inference
(``W += (alpha/r) B A``, computed in fp32) or injected with PEFT and kept trainable when ``merge_lora=False``.

Weights are read straight to the target device/dtype into a model built on the meta device, so a 7B checkpoint
never gets a random init. Norm stats: ``config.norm_stats`` <- base ``dataset_statistics.json`` <- adapter /
top-level ``dataset_statistics.json`` (later wins), then the unnorm key is chosen explicitly (see
:func:`~crane_x7_vla.models.normalization.select_unnorm_key`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crane_x7_vla.models.config import OpenVLAConfig
from crane_x7_vla.models.normalization import merge_norm_stats, select_unnorm_key
from crane_x7_vla.models.openvla import OpenVLA
from crane_x7_vla.utils.atomic import atomic_directory

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
STATS_NAME = "dataset_statistics.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREPROCESSOR_NAME = "preprocessor_config.json"
LORA_SUBDIR = "lora_adapters"
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", f"{LORA_SUBDIR}/*"]
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


# ------------------------------------------------------------------------------------------------ sources
def _looks_like_hub_id(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", s)) and not s.startswith((".", "~"))


def resolve_checkpoint(
    path_or_hub_id: str | os.PathLike[str], hf_token: str | None = None, patterns: list[str] | None = None
) -> Path:
    """A local directory as is, or a Hub repo downloaded (or found in the cache) -> local directory.

    ``patterns``: the files to fetch from the Hub (default: an OpenVLA HF checkpoint's).
    """
    s = os.fspath(path_or_hub_id)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise NotADirectoryError(f"{p} is a file; pass the checkpoint DIRECTORY (the one holding config.json)")
        return p
    if not _looks_like_hub_id(s):
        raise FileNotFoundError(f"{s!r}: no such local directory, and it is not a Hub id of the form 'org/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    token = hf_token or os.environ.get("HF_TOKEN") or None
    try:
        return Path(
            snapshot_download(s, token=token, allow_patterns=patterns or _HUB_PATTERNS, local_files_only=offline)  # type: ignore[arg-type]
        )
    except GatedRepoError as e:
        raise PermissionError(
            f"Hub repo {s!r} is gated: accept its licence on the Hub and set HF_TOKEN to a token with access"
        ) from e
    except RepositoryNotFoundError as e:
        who = "with the given token" if token else "without a token (HF_TOKEN is not set)"
        raise FileNotFoundError(
            f"Hub repo {s!r} was not found {who}: check the id, or set HF_TOKEN if the repo is private"
        ) from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{s!r} is not a local directory and is not in the Hugging Face cache, and {why}: download it once "
            "while online (or unset HF_HUB_OFFLINE), or pass a local checkpoint directory"
        ) from e
    except HfHubHTTPError as e:
        raise ConnectionError(f"downloading Hub repo {s!r} failed: {e}") from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


# ------------------------------------------------------------------------------------------------ weights
def _weight_files(ckpt: Path) -> list[Path]:
    if (ckpt / SAFE_INDEX).is_file():
        index = _read_json(ckpt / SAFE_INDEX)
        files = sorted(set(index.get("weight_map", {}).values()))
        missing = [f for f in files if not (ckpt / f).is_file()]
        if not files or missing:
            raise FileNotFoundError(f"{ckpt / SAFE_INDEX} lists shard(s) that are missing: {missing or 'none listed'}")
        return [ckpt / f for f in files]
    if (ckpt / SAFE_WEIGHTS).is_file():
        return [ckpt / SAFE_WEIGHTS]
    raise FileNotFoundError(
        f"{ckpt}: no {SAFE_WEIGHTS} or {SAFE_INDEX}; an OpenVLA checkpoint needs safetensors weights "
        "(re-save .bin/.pt weights with save_pretrained)"
    )


def read_state_dict(files: list[Path], device: str | torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    from safetensors import safe_open

    out: dict[str, Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device=str(device)) as fh:
            for k in fh.keys():  # noqa: SIM118 (safe_open has keys(), not __iter__)
                t = fh.get_tensor(k)
                out[k] = t.to(dtype) if t.is_floating_point() else t
    return out


def check_state_matches(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> None:
    """Raise a clear error unless ``state`` has exactly the expected keys, each with the expected shape."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights do not match the config: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); is config.json from the same checkpoint?"
        )
    bad = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"weight {k} has shape {tuple(state[k].shape)}, the config implies {tuple(expected[k].shape)}")


def _load_weights(model: OpenVLA, state: dict[str, Tensor], device: torch.device) -> None:
    check_state_matches(model.state_dict(), state)
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (RoPE inv_freq) are not in the file: rebuild them on the real device.
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    llm = model.language_model.model
    llm.rotary_emb = LlamaRotaryEmbedding(llm.config).to(device)


def build_on_meta(config: OpenVLAConfig, **kwargs: Any) -> OpenVLA:
    with torch.device("meta"):
        return OpenVLA(config, **kwargs)


# ------------------------------------------------------------------------------------------------ LoRA
def _find_adapter(ckpt: Path) -> Path | None:
    if (ckpt / ADAPTER_CONFIG).is_file():
        return ckpt
    if (ckpt / LORA_SUBDIR / ADAPTER_CONFIG).is_file():
        return ckpt / LORA_SUBDIR
    return None


def _resolve_base(adapter_dir: Path, ckpt: Path, hf_token: str | None) -> Path:
    if adapter_dir != ckpt and (ckpt / CONFIG_NAME).is_file():
        return ckpt  # <ckpt>/lora_adapters/ next to a full checkpoint
    base = _read_json(adapter_dir / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG} has no base_model_name_or_path; cannot find the base model")
    rel = (adapter_dir / base).resolve()
    if not Path(base).expanduser().exists() and rel.is_dir():
        return rel  # relative to the adapter directory
    return resolve_checkpoint(base, hf_token)


def read_lora(adapter_dir: Path) -> tuple[dict[str, tuple[Tensor, Tensor]], float, dict[str, Any]]:
    """-> ({module path: (A [r,in], B [out,r])}, scale, adapter config)."""
    cfg = _read_json(adapter_dir / ADAPTER_CONFIG)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{adapter_dir}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    if cfg.get("use_dora"):
        raise ValueError(f"{adapter_dir}: DoRA adapters are not supported; merge them with PEFT first")
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{adapter_dir}: {ADAPTER_WEIGHTS} is missing (only safetensors adapters are read)")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
    raw = read_state_dict([adapter_dir / ADAPTER_WEIGHTS], "cpu", torch.float32)
    pairs: dict[str, dict[str, Tensor]] = {}
    for k, v in raw.items():
        m = _LORA_KEY.match(k)
        if m is None:
            raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: unexpected key {k!r} (only lora_A/lora_B weights)")
        pairs.setdefault(m["module"], {})[m["ab"]] = v
    incomplete = [m for m, ab in pairs.items() if set(ab) != {"A", "B"}]
    if incomplete:
        raise ValueError(f"{adapter_dir}: modules with only one of lora_A/lora_B: {incomplete[:3]}")
    return {m: (ab["A"], ab["B"]) for m, ab in pairs.items()}, scale, cfg


def _linear(model: nn.Module, name: str) -> nn.Linear:
    try:
        mod = model.get_submodule(name)
    except AttributeError as e:
        raise ValueError(f"LoRA adapter targets {name!r}, which this model does not have (wrong base model?)") from e
    if not isinstance(mod, nn.Linear):
        raise ValueError(f"LoRA adapter targets {name!r}, which is a {type(mod).__name__}, not a Linear")
    return mod


def merge_lora_weights(model: nn.Module, lora: dict[str, tuple[Tensor, Tensor]], scale: float) -> None:
    """W += scale * B @ A for every adapted Linear (fp32 math, stored back in the weight's dtype)."""
    with torch.no_grad():
        for name, (a, b) in lora.items():
            lin = _linear(model, name)
            delta = scale * (b.float() @ a.float())  # [out,in]
            lin.weight.copy_((lin.weight.float() + delta.to(lin.weight.device)).to(lin.weight.dtype))


def inject_lora(model: nn.Module, lora: dict[str, tuple[Tensor, Tensor]], cfg: dict[str, Any]) -> None:
    """Wrap the adapted Linears with PEFT LoRA layers (trainable, unmerged) and load A/B into them."""
    from peft import LoraConfig, inject_adapter_in_model

    for name in lora:
        _linear(model, name)
    lcfg = LoraConfig(
        r=int(cfg["r"]),
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=float(cfg.get("lora_dropout", 0.0)),
        use_rslora=bool(cfg.get("use_rslora", False)),
        target_modules=sorted(lora),
    )
    inject_adapter_in_model(lcfg, model)
    with torch.no_grad():
        for name, (a, b) in lora.items():
            layer: Any = model.get_submodule(name)
            la, lb = layer.lora_A["default"], layer.lora_B["default"]
            la.weight.copy_(a.to(la.weight))
            lb.weight.copy_(b.to(lb.weight))


# ------------------------------------------------------------------------------------------------ load
def _load_tokenizer(dirs: list[Path]) -> Any:
    # tokenizer.json is read as is by the tokenizers backend (the published fast tokenizer, byte for byte);
    # AutoTokenizer would consult config.json, whose model_type "openvla" transformers does not know.
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    for d in dirs:
        if (d / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(d))
        if (d / "tokenizer.model").is_file():
            return AutoTokenizer.from_pretrained(str(d))
    raise FileNotFoundError(f"no tokenizer files (tokenizer.json / tokenizer.model) in {[str(d) for d in dirs]}")


def _load_stats(dirs: list[Path], base: dict[str, Any]) -> dict[str, Any]:
    stats = dict(base)
    for d in dirs:
        f = d / STATS_NAME
        if f.is_file():
            stats = merge_norm_stats(stats, _read_json(f))
    return stats


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_vla(
    path_or_hub_id: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    unnorm_key: str | None = None,
    hf_token: str | None = None,
    merge_lora: bool = True,
    vq_path: str | os.PathLike[str] | None = None,
) -> Any:
    """Load a VLA checkpoint (local / Hub / LoRA adapter) ready for inference (``eval()`` mode).

    The family is detected from the checkpoint: the OpenVLA HF layout -> :class:`OpenVLA`; a Prismatic run
    directory (``config.json`` with a ``"vla"`` block) -> :class:`~crane_x7_vla.models.minivla.MiniVLA`
    (``vq_path``: its VQ weights, see :func:`~crane_x7_vla.models.minivla_loading.load_minivla`).
    ``dtype`` defaults to bf16 on CUDA and fp32 elsewhere. ``unnorm_key``: the dataset whose action stats
    unnormalise predictions; required when the checkpoint has stats for several datasets.
    """
    dev = torch.device(device)
    dtype = dtype or default_dtype(dev)
    ckpt = resolve_checkpoint(path_or_hub_id, hf_token)
    adapter_dir = _find_adapter(ckpt)
    base = _resolve_base(adapter_dir, ckpt, hf_token) if adapter_dir is not None else ckpt
    from crane_x7_vla.models.minivla_loading import is_prismatic_checkpoint

    if is_prismatic_checkpoint(base):
        return _load_minivla(path_or_hub_id, ckpt, adapter_dir, base, dev, dtype, unnorm_key, hf_token,
                             merge_lora, vq_path)
    config = OpenVLAConfig.from_file(base / CONFIG_NAME)
    stat_dirs = list(dict.fromkeys(d for d in (base, adapter_dir, ckpt) if d is not None))
    norm_stats = _load_stats(stat_dirs, config.norm_stats)
    key = select_unnorm_key(norm_stats, unnorm_key)
    tokenizer = _load_tokenizer([d for d in (ckpt, adapter_dir, base) if d is not None])
    model = build_on_meta(config, tokenizer=tokenizer, norm_stats=norm_stats, unnorm_key=key)
    _load_weights(model, read_state_dict(_weight_files(base), dev, dtype), dev)
    if adapter_dir is not None:
        _apply_adapter(model, adapter_dir, merge_lora, dev)
    log.info("loaded OpenVLA from %s (unnorm_key=%s, action_dim=%d, %s)", ckpt, key, model.action_dim, dtype)
    return model.eval()


def _apply_adapter(model: nn.Module, adapter_dir: Path, merge_lora: bool, dev: torch.device) -> None:
    lora, scale, acfg = read_lora(adapter_dir)
    if merge_lora:
        merge_lora_weights(model, lora, scale)
    else:
        inject_lora(model, lora, acfg)
        model.to(dev)


def _load_minivla(
    source: str | os.PathLike[str], ckpt: Path, adapter_dir: Path | None, base: Path, dev: torch.device,
    dtype: torch.dtype, unnorm_key: str | None, hf_token: str | None, merge_lora: bool,
    vq_path: str | os.PathLike[str] | None,
) -> Any:
    """The Prismatic (MiniVLA) branch of :func:`load_vla`; LoRA adapters are applied as for OpenVLA."""
    from crane_x7_vla.models.minivla_loading import CKPT_DIR, load_minivla

    base_source: str | os.PathLike[str] = base
    if not (base / CKPT_DIR).is_dir():
        # A Hub snapshot fetched with the OpenVLA patterns lacks checkpoints/: fetch the Prismatic files.
        base_source = source if adapter_dir is None else _read_json(adapter_dir / ADAPTER_CONFIG).get(
            "base_model_name_or_path", base)
    extra = [d for d in (adapter_dir, ckpt) if d is not None and d != base]
    model = load_minivla(base_source, device=dev, dtype=dtype, unnorm_key=unnorm_key, hf_token=hf_token,
                         vq_path=vq_path, extra_stat_dirs=extra)
    if adapter_dir is not None:
        _apply_adapter(model, adapter_dir, merge_lora, dev)
    return model.eval()


# ------------------------------------------------------------------------------------------------ save
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights in the published key layout; unmerged PEFT LoRA layers are folded in (not mutated)."""
    out: dict[str, Tensor] = {}
    lora_layers = {
        name: mod for name, mod in model.named_modules() if hasattr(mod, "base_layer") and hasattr(mod, "lora_A")
    }
    for k, v in model.state_dict().items():
        if ".lora_" in k:
            continue
        owner = next((n for n in lora_layers if k.startswith(n + ".base_layer.")), None)
        if owner is not None:
            leaf = k[len(owner) + len(".base_layer.") :]
            k = f"{owner}.{leaf}"
            if leaf == "weight":
                layer = lora_layers[owner]
                delta = sum(
                    (layer.get_delta_weight(a) for a in layer.active_adapters),  # type: ignore[operator,attr-defined]
                    torch.zeros_like(v),
                )
                v = v + delta.to(v.dtype)
        out[k] = v.detach().to("cpu").contiguous()
    return out


def preprocessor_config(config: OpenVLAConfig) -> dict[str, Any]:
    """``preprocessor_config.json`` in the published PrismaticImageProcessor schema."""
    towers = config.vision_towers
    return {
        "image_processor_type": "PrismaticImageProcessor",
        "processor_class": "PrismaticProcessor",
        "image_resize_strategy": config.image_resize_strategy,
        "use_fused_vision_backbone": config.use_fused_vision_backbone,
        "input_sizes": [[3, t.image_size, t.image_size] for t in towers],
        "interpolations": ["bicubic"] * len(towers),
        "means": [list(t.mean) for t in towers],
        "stds": [list(t.std) for t in towers],
        "tvf_resize_params": [
            {"antialias": True, "interpolation": 3, "max_size": None, "size": [t.image_size, t.image_size]}
            for t in towers
        ],
        "tvf_crop_params": [{"output_size": [t.image_size, t.image_size]} for t in towers],
        "tvf_normalize_params": [{"inplace": False, "mean": list(t.mean), "std": list(t.std)} for t in towers],
        "tvf_do_letterbox": config.image_resize_strategy == "letterbox",
        "tvf_letterbox_fill": [int(255 * m) for m in towers[0].mean]
        if config.image_resize_strategy == "letterbox"
        else None,
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_pretrained(model: Any, out_dir: str | os.PathLike[str], *, max_shard_size: int | str = "5GB") -> Path:
    """Write ``model`` in the published layout, atomically (the directory appears complete or not at all).

    Files: config.json, model.safetensors (or shards + index when larger than ``max_shard_size``), tokenizer
    files, preprocessor_config.json, dataset_statistics.json. Unmerged LoRA layers are merged into the output.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    from crane_x7_vla.models.minivla import MiniVLA

    if isinstance(model, MiniVLA):  # the Prismatic layout it was published in
        from crane_x7_vla.models.minivla_loading import save_minivla

        return save_minivla(model, out_dir)
    out = Path(out_dir)
    state = merged_state_dict(model)
    dtype = next(iter(state.values())).dtype
    with atomic_directory(out) as tmp:
        # config.json keeps the config's own stats; the merged (effective) ones go to dataset_statistics.json,
        # which every loader merges over them, as in the published fine-tuning output.
        cfg = model.config.to_dict()
        cfg.setdefault("architectures", ["OpenVLAForActionPrediction"])
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
        _write_json(tmp / CONFIG_NAME, cfg)
        split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
        for filename, keys in split.filename_to_tensors.items():
            save_file({k: state[k] for k in keys}, str(tmp / filename), metadata={"format": "pt"})
        if split.is_sharded:
            total = sum(t.numel() * t.element_size() for t in state.values())
            _write_json(tmp / SAFE_INDEX, {"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename})
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp))
            _ensure_special_tokens_map(tmp, model.tokenizer)
        _write_json(tmp / PREPROCESSOR_NAME, preprocessor_config(model.config))
        _write_json(tmp / STATS_NAME, model.norm_stats)
    return out


def _ensure_special_tokens_map(d: Path, tokenizer: Any) -> None:
    # transformers 5 folds special tokens into tokenizer_config.json; the published layout also has this file.
    if not (d / "special_tokens_map.json").is_file():
        _write_json(d / "special_tokens_map.json", dict(tokenizer.special_tokens_map))
