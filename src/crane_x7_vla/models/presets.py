"""Published architecture configs (config.json values, no weights): used to build full-size models with random
weights for benchmarks and to check our module tree against the published key layout."""

from __future__ import annotations

from typing import Any

OPENVLA_7B: dict[str, Any] = {
    "model_type": "openvla",
    "vision_backbone_id": "dinosiglip-vit-so-224px",
    "llm_backbone_id": "llama2-7b-pure",
    "arch_specifier": "no-align+fused-gelu-mlp",
    "use_fused_vision_backbone": True,
    "image_resize_strategy": "resize-naive",
    "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
    "timm_override_act_layers": [None, None],
    "image_sizes": [224, 224],
    "llm_max_length": 2048,
    "pad_token_id": 32000,
    "pad_to_multiple_of": 64,
    "n_action_bins": 256,
    "norm_stats": {},
    "text_config": {
        "model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
        "max_position_embeddings": 2048, "rope_theta": 10000.0, "pad_token_id": 32000,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
}
