"""Loading and saving MiniVLA in the published Prismatic layout (``config.json`` with a ``"vla"`` block,
``checkpoints/step-*.pt``, ``dataset_statistics.json``), plus the separate VQ weights.

Design choice: we read the training output as published instead of converting it offline, so any openvla-mini
checkpoint (local or Hub) loads unchanged. ``torch.load(weights_only=True)`` (no pickle code execution) yields
``{"model": {vision_backbone, projector, llm_backbone}}``; keys are renamed to the OpenVLA-style module tree
(``dino_featurizer`` -> ``featurizer``, ``siglip_featurizer`` -> ``fused_featurizer``, timm LayerScale ``gamma`` ->
``scale_factor``, ``projector.{0,2,4}`` -> ``projector.fc{1,2,3}``, ``llm.`` -> ``language_model.``) and streamed into
a model built on the meta device (no random init of 1B parameters). Saving writes the inverse mapping.

The tokenizer: ``tokenizer.json`` next to the checkpoint when present (our tiny checkpoints and re-saves carry one),
else the base LLM's tokenizer from the Hub (Prismatic checkpoints carry none) with ``<|extra_0..255|>`` appended.
VQ weights: ``vq_path=`` (local dir or ``org/repo/subfolder``), else ``<ckpt>/vq/``, else the published Hub location
of the named action tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from crane_x7_vla.models.minivla import MiniVLA
from crane_x7_vla.models.minivla_config import KNOWN_VQ_SOURCES, NUM_EXTRA_TOKENS, MiniVLAConfig
from crane_x7_vla.models.minivla_processing import ENDOFTEXT, IM_END, IM_START
from crane_x7_vla.models.normalization import merge_norm_stats, select_unnorm_key
from crane_x7_vla.models.vision import timm_to_openvla_keys
from crane_x7_vla.models.vq import ActionVQ, load_action_vq, write_vq_files
from crane_x7_vla.utils.atomic import atomic_directory

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
STATS_NAME = "dataset_statistics.json"
CKPT_DIR = "checkpoints"
VQ_SUBDIR = "vq"
PRISMATIC_PATTERNS = [
    CONFIG_NAME, "config.yaml", STATS_NAME, f"{CKPT_DIR}/*.pt", "tokenizer*", "special_tokens_map.json", f"{VQ_SUBDIR}/*",
]
_TOKENIZER_PATTERNS = ["tokenizer*", "vocab.json", "merges.txt", "special_tokens_map.json", "config.json"]
_STEP = re.compile(r"step-(\d+)")
_PROJECTOR = {"0": "fc1", "2": "fc2", "4": "fc3"}
_TOWERS = {"dino_featurizer": "featurizer", "siglip_featurizer": "fused_featurizer"}


def extra_token(k: int) -> str:
    return f"<|extra_{k}|>"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def is_prismatic_checkpoint(directory: Path) -> bool:
    """True when ``directory/config.json`` is a Prismatic training config (has a ``"vla"`` block)."""
    f = directory / CONFIG_NAME
    if not f.is_file():
        return False
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return isinstance(data, dict) and isinstance(data.get("vla"), dict)


# ------------------------------------------------------------------------------------------------ sources
def _hub_subfolder(source: str) -> tuple[str, str] | None:
    """'org/repo/sub/dir' -> ('org/repo', 'sub/dir'); None when it is not of that form."""
    parts = source.strip("/").split("/")
    if len(parts) < 3 or source.startswith((".", "~", "/")):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_prismatic(source: str | os.PathLike[str], hf_token: str | None = None) -> Path:
    """A local Prismatic run directory, or a Hub repo downloaded with the files a Prismatic checkpoint has."""
    from crane_x7_vla.models.loading import resolve_checkpoint

    p = Path(os.fspath(source)).expanduser()
    if p.is_dir():
        return p
    return resolve_checkpoint(os.fspath(source), hf_token, patterns=PRISMATIC_PATTERNS)


def find_step_checkpoint(ckpt: Path) -> Path:
    """The newest ``checkpoints/step-*.pt`` (highest step), or ``latest-checkpoint.pt``."""
    d = ckpt / CKPT_DIR
    steps = sorted(d.glob("step-*.pt"), key=lambda p: int(m[1]) if (m := _STEP.match(p.name)) else -1)
    if steps:
        return steps[-1]
    if (d / "latest-checkpoint.pt").is_file():
        return d / "latest-checkpoint.pt"
    raise FileNotFoundError(
        f"{ckpt}: no {CKPT_DIR}/step-*.pt; a Prismatic MiniVLA checkpoint keeps its weights there "
        "(download the whole run directory, e.g. with huggingface-cli download <repo>)"
    )


def resolve_vq_dir(config: MiniVLAConfig, ckpt: Path, vq_path: str | os.PathLike[str] | None,
                   hf_token: str | None) -> Path:
    from crane_x7_vla.models.loading import resolve_checkpoint

    source = os.fspath(vq_path) if vq_path is not None else None
    if source is None and (ckpt / VQ_SUBDIR).is_dir():
        return ckpt / VQ_SUBDIR
    source = source or KNOWN_VQ_SOURCES.get(config.action_tokenizer)
    if source is None:
        raise FileNotFoundError(
            f"{ckpt}: action_tokenizer {config.action_tokenizer!r} needs VQ weights and no published location is "
            f"known; pass vq_path= (a pretrain_vq run dir with config.json + checkpoints/model.pt) or put it at "
            f"{ckpt / VQ_SUBDIR}"
        )
    local = Path(source).expanduser()
    if local.exists():
        return local
    sub = _hub_subfolder(source)
    try:
        if sub is None:
            return resolve_checkpoint(source, hf_token, patterns=["config.json", "checkpoints/*.pt"])
        repo, folder = sub
        return resolve_checkpoint(repo, hf_token, patterns=[f"{folder}/config.json", f"{folder}/checkpoints/*.pt"]) / folder
    except (FileNotFoundError, ConnectionError, PermissionError) as e:
        raise FileNotFoundError(
            f"VQ weights for {config.action_tokenizer!r} not found: no {ckpt / VQ_SUBDIR} and {source!r} could not "
            f"be resolved ({e}). Pass vq_path= a local pretrain_vq run directory or an 'org/repo/subfolder' Hub path"
        ) from e


# ------------------------------------------------------------------------------------------------ tokenizer
def add_extra_tokens(tokenizer: Any) -> Any:
    """Append ``<|extra_0..255|>`` (Prismatic's ``qwen25-*-extra``) if missing; check the id layout and pad token."""
    if tokenizer.convert_tokens_to_ids(extra_token(0)) in (None, tokenizer.unk_token_id):
        tokenizer.add_tokens([extra_token(k) for k in range(NUM_EXTRA_TOKENS)], special_tokens=True)
    n = len(tokenizer)
    for k in (0, NUM_EXTRA_TOKENS - 1):
        if tokenizer.convert_tokens_to_ids(extra_token(k)) != n - NUM_EXTRA_TOKENS + k:
            raise ValueError(
                f"tokenizer id layout is wrong: {extra_token(k)} must be len(tokenizer) - {NUM_EXTRA_TOKENS} + {k} "
                f"= {n - NUM_EXTRA_TOKENS + k}; the extra tokens must be the last {NUM_EXTRA_TOKENS} ids"
            )
    for tok in (IM_START, IM_END, ENDOFTEXT):
        if tokenizer.convert_tokens_to_ids(tok) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {tok} token; MiniVLA needs a Qwen2.5 tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = ENDOFTEXT  # Prismatic's Qwen backbone pads with <|endoftext|>
    return tokenizer


def load_minivla_tokenizer(ckpt: Path, config: MiniVLAConfig, hf_token: str | None) -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from crane_x7_vla.models.loading import resolve_checkpoint

    if (ckpt / "tokenizer.json").is_file():
        # fix_mistral_regex=False: transformers mistakes the Prismatic config.json (no model_type) for a Mistral one.
        return add_extra_tokens(PreTrainedTokenizerFast.from_pretrained(str(ckpt), fix_mistral_regex=False))
    if not config.tokenizer_source:
        raise FileNotFoundError(f"{ckpt}: no tokenizer.json and no known tokenizer for {config.llm_backbone_id!r}")
    src = resolve_checkpoint(config.tokenizer_source, hf_token, patterns=_TOKENIZER_PATTERNS)
    return add_extra_tokens(AutoTokenizer.from_pretrained(str(src)))


# ------------------------------------------------------------------------------------------------ key maps
def prismatic_to_native(model_state: Mapping[str, Mapping[str, Tensor]], source: str = "checkpoint") -> dict[str, Tensor]:
    """``{vision_backbone, projector, llm_backbone}`` state dicts -> flat keys of :class:`MiniVLA`."""
    missing = [k for k in ("vision_backbone", "projector", "llm_backbone") if k not in model_state]
    if missing:
        raise ValueError(
            f"{source}: ['model'] lacks {missing}; expected a full Prismatic VLA checkpoint "
            "(vision_backbone, projector, llm_backbone)"
        )
    out: dict[str, Tensor] = {}
    for k, v in timm_to_openvla_keys(model_state["vision_backbone"]).items():
        tower, _, rest = k.partition(".")
        if tower not in _TOWERS:
            raise ValueError(f"{source}: unexpected vision_backbone key {k!r} (expected dino_/siglip_featurizer.*)")
        out[f"vision_backbone.{_TOWERS[tower]}.{rest}"] = v
    for k, v in model_state["projector"].items():
        m = re.fullmatch(r"projector\.(\d)\.(weight|bias)", k)
        if m is None or m[1] not in _PROJECTOR:
            raise ValueError(f"{source}: unexpected projector key {k!r} (expected projector.{{0,2,4}}.weight/bias)")
        out[f"projector.{_PROJECTOR[m[1]]}.{m[2]}"] = v
    for k, v in model_state["llm_backbone"].items():
        if not k.startswith("llm."):
            raise ValueError(f"{source}: unexpected llm_backbone key {k!r} (expected llm.*)")
        out["language_model." + k.removeprefix("llm.")] = v
    return out


def native_to_prismatic(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Inverse of :func:`prismatic_to_native` (LayerScale saved as timm's ``gamma``, as Prismatic does)."""
    towers = {v: k for k, v in _TOWERS.items()}
    proj = {v: k for k, v in _PROJECTOR.items()}
    out: dict[str, dict[str, Tensor]] = {"vision_backbone": {}, "projector": {}, "llm_backbone": {}}
    for k, v in state.items():
        if k.startswith("vision_backbone."):
            tower, _, rest = k.removeprefix("vision_backbone.").partition(".")
            rest = re.sub(r"\.(ls[12])\.scale_factor$", r".\1.gamma", rest)
            out["vision_backbone"][f"{towers[tower]}.{rest}"] = v
        elif k.startswith("projector."):
            fc, _, leaf = k.removeprefix("projector.").partition(".")
            out["projector"][f"projector.{proj[fc]}.{leaf}"] = v
        elif k.startswith("language_model."):
            out["llm_backbone"]["llm." + k.removeprefix("language_model.")] = v
        else:
            raise ValueError(f"cannot map weight {k!r} to the Prismatic layout")
    return out


def _load_weights(model: MiniVLA, state: dict[str, Tensor], device: torch.device, dtype: torch.dtype) -> None:
    tied = bool(model.language_model.config.tie_word_embeddings)
    head, emb = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"
    if tied and head in state and emb in state and not torch.equal(state[head], state[emb]):
        raise ValueError("the LLM config ties lm_head to the embedding, but the checkpoint's lm_head differs")
    if tied:
        state.pop(head, None)  # the tie is restored below
    from crane_x7_vla.models.loading import check_state_matches  # loading dispatches here: import late

    check_state_matches({k: v for k, v in model.state_dict().items() if not (tied and k == head)}, state)
    state = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    lm = model.language_model
    if tied:
        lm.lm_head.weight = lm.model.embed_tokens.weight
    # Non-persistent buffers (RoPE inv_freq) are not in the file: rebuild them on the real device.
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    lm.model.rotary_emb = Qwen2RotaryEmbedding(lm.config).to(device)


# ------------------------------------------------------------------------------------------------ load / save
def load_minivla(
    source: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    unnorm_key: str | None = None,
    hf_token: str | None = None,
    vq_path: str | os.PathLike[str] | None = None,
    extra_stat_dirs: Sequence[Path] = (),
) -> MiniVLA:
    """Load a Prismatic MiniVLA (local run dir or Hub id) ready for inference (``eval()``).

    ``extra_stat_dirs``: further directories whose ``dataset_statistics.json`` is merged over the checkpoint's
    (a LoRA adapter's). ``vq_path``: the VQ weights of VQ variants (see the module docstring for the default).
    """
    from crane_x7_vla.models.loading import default_dtype

    dev = torch.device(device)
    dtype = dtype or default_dtype(dev)
    ckpt = resolve_prismatic(source, hf_token)
    config = MiniVLAConfig.from_file(ckpt / CONFIG_NAME)
    step = find_step_checkpoint(ckpt)
    vq: ActionVQ | None = None
    if config.action_kind == "vq":
        vq = load_action_vq(resolve_vq_dir(config, ckpt, vq_path, hf_token))
    norm_stats: dict[str, Any] = {}
    for d in (ckpt, *extra_stat_dirs):
        if (d / STATS_NAME).is_file():
            norm_stats = merge_norm_stats(norm_stats, _read_json(d / STATS_NAME))
    key = select_unnorm_key(norm_stats, unnorm_key)
    if vq is not None and vq.config.action_dim != len(norm_stats[key]["action"]["q01"]):
        raise ValueError(
            f"the VQ decodes {vq.config.action_dim}-dim actions but dataset {key!r} has "
            f"{len(norm_stats[key]['action']['q01'])}; pass the VQ weights trained on that dataset (vq_path=)"
        )
    tokenizer = load_minivla_tokenizer(ckpt, config, hf_token)
    with torch.device("meta"):
        model = MiniVLA(config, tokenizer, norm_stats=norm_stats, unnorm_key=key, action_vq=vq)
    raw = torch.load(step, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or "model" not in raw:
        raise ValueError(f"{step}: expected a Prismatic checkpoint dict with a 'model' entry")
    _load_weights(model, prismatic_to_native(raw["model"], str(step)), dev, dtype)
    log.info("loaded MiniVLA from %s (%s, %s, unnorm_key=%s, action_dim=%d, %s)", ckpt, step.name,
             config.action_tokenizer, key, model.action_dim, dtype)
    return model.eval()


def save_minivla(model: MiniVLA, out_dir: str | os.PathLike[str], *, step_name: str | None = None) -> Path:
    """Write ``model`` in the Prismatic layout, atomically; the VQ weights (if any) go to ``<out>/vq/``.

    Files: config.json, dataset_statistics.json, checkpoints/<step_name>, tokenizer files (our addition: loading
    then needs no Hub access), vq/{config.json, checkpoints/model.pt}. Unmerged LoRA layers are merged in.
    """
    from crane_x7_vla.models.loading import merged_state_dict

    out = Path(out_dir)
    state = merged_state_dict(model)
    with atomic_directory(out) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        (tmp / STATS_NAME).write_text(json.dumps(model.norm_stats, indent=2) + "\n")
        (tmp / CKPT_DIR).mkdir()
        name = step_name or "step-000000-epoch-00-loss=0.0000.pt"
        torch.save({"model": native_to_prismatic(state)}, tmp / CKPT_DIR / name)
        model.tokenizer.save_pretrained(str(tmp))
        if model.action_vq is not None:
            write_vq_files(model.action_vq, tmp / VQ_SUBDIR)
    return out
