"""What one greedy OpenVLA action must cost on a GPU: bytes read and FLOPs per phase, and the floor they set.

An action is the vision towers + projector, one prefill pass over the prompt (BOS, the patches, the text), then
``action_dim - 1`` decode passes of one token each. A decode pass reads every LLM weight once (it is bound by
memory bandwidth); the prefill and the towers do ~2 FLOPs per weight and row (bound by the tensor cores). Given a
GPU's measured streaming-read bandwidth and dense-GEMM rate, :meth:`ActionCost.floor_ms` is the time no
implementation of the same math on the same weights can beat: every pass at the better of the two rates it is
bound by, and nothing else (no attention kernels, norms, launches, gaps or host work).

Counted from the config alone (torch-free, like :mod:`.config`), so the bench's floor and the spec's numbers
(``shared/specs/openvla.md`` section 8) can be checked against each other on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from crane_x7_vla.models.config import OpenVLAConfig, ViTConfig


@dataclass(frozen=True)
class ActionCost:
    """Work of one batch-1 greedy action. Bytes at the model's weight dtype; FLOPs count a multiply-add as 2."""

    decode_passes: int  # one-token LLM passes after the prefill (action_dim - 1)
    decode_pass_bytes: float  # what one decode pass must read: LLM layers, final norm, lm_head, the KV cache
    prefill_bytes: float  # the LLM weights the prefill reads once
    prefill_flops: float  # the prefill's matmuls (linear layers over every row, causal attention)
    vision_bytes: float  # the towers' and projector's weights
    vision_flops: float  # patch embedding, the blocks that run, the projector

    def floor_ms(self, read_tb_s: float, gemm_tflop_s: float) -> float:
        """Lower bound in ms at ``read_tb_s`` TB/s of streaming reads and ``gemm_tflop_s`` TFLOP/s of dense GEMM:
        each phase takes the longer of its bytes and its FLOPs at those rates."""
        if read_tb_s <= 0 or gemm_tflop_s <= 0:
            raise ValueError(f"rates must be positive, got {read_tb_s} TB/s and {gemm_tflop_s} TFLOP/s")
        return sum(self.phases_ms(read_tb_s, gemm_tflop_s).values())

    def phases_ms(self, read_tb_s: float, gemm_tflop_s: float) -> dict[str, float]:
        """The floor of each phase (ms): ``vision``, ``prefill`` and ``decode`` (all decode passes)."""
        def at(nbytes: float, flops: float) -> float:
            return max(nbytes / (read_tb_s * 1e9), flops / (gemm_tflop_s * 1e9))
        return {"vision": at(self.vision_bytes, self.vision_flops),
                "prefill": at(self.prefill_bytes, self.prefill_flops),
                "decode": self.decode_passes * self.decode_pass_bytes / (read_tb_s * 1e9)}


def _vit_cost(t: ViTConfig) -> tuple[int, float]:
    """(parameters, FLOPs at batch 1) of one tower: the patch embedding and the depth-1 blocks that run (the
    features come from block depth-2; the last block and the SigLIP pooling head are never run)."""
    d, m, n = t.embed_dim, t.mlp_dim, t.num_patches + t.num_prefix_tokens
    patch = 3 * t.patch_size**2 * d
    block_linear = 4 * d * d + 2 * d * m  # q, k, v, proj; fc1, fc2
    blocks = t.depth - 1
    flops = 2.0 * t.num_patches * patch + blocks * (2.0 * n * block_linear + 4.0 * n * n * d)  # + QK^T and PV
    return patch + blocks * block_linear, flops


def action_cost(config: OpenVLAConfig, prompt_tokens: int, action_dim: int, dtype_bytes: int = 2) -> ActionCost:
    """The :class:`ActionCost` of an action of ``action_dim`` tokens after a prompt of ``prompt_tokens`` text
    tokens (BOS and the appended "▁" included), with weights of ``dtype_bytes`` bytes (bf16: 2)."""
    if prompt_tokens < 1 or action_dim < 1:
        raise ValueError(f"prompt_tokens and action_dim must be >= 1, got {prompt_tokens} and {action_dim}")
    tc = config.text_config
    h, inter, layers = int(tc["hidden_size"]), int(tc["intermediate_size"]), int(tc["num_hidden_layers"])
    heads = int(tc["num_attention_heads"])
    kv_width = h // heads * int(tc.get("num_key_value_heads", heads))
    vocab = int(tc["vocab_size"])
    layer_linear = 2 * h * h + 2 * h * kv_width + 3 * h * inter  # q, o; k, v; gate, up, down
    layer_params = layer_linear + 2 * h  # + the two RMSNorm weights
    patches = config.vision_towers[0].num_patches
    rows = prompt_tokens + patches  # the prefill's sequence
    kv_bytes = 2 * layers * kv_width * (rows + action_dim) * dtype_bytes  # the K/V a decode pass reads (at most)
    llm_bytes = (layers * layer_params + h + vocab * h) * dtype_bytes  # layers, final norm, lm_head
    # Causal attention: row i attends to i + 1 keys, ~rows^2 / 2 score and value products per layer.
    prefill_flops = 2.0 * rows * layers * layer_linear + layers * 2.0 * rows * rows * h + 2.0 * h * vocab
    vision_params, vision_flops = 0, 0.0
    for t in config.vision_towers:
        p, f = _vit_cost(t)
        vision_params, vision_flops = vision_params + p, vision_flops + f
    dv = config.vision_dim
    proj = (dv * 4 * dv + 4 * dv * h + h * h) if config.use_fused_vision_backbone else (dv * h + h * h)
    return ActionCost(
        decode_passes=action_dim - 1,
        decode_pass_bytes=float(llm_bytes + kv_bytes),
        prefill_bytes=float(llm_bytes),
        prefill_flops=prefill_flops,
        vision_bytes=float((vision_params + proj) * dtype_bytes),
        vision_flops=vision_flops + 2.0 * patches * proj,
    )
