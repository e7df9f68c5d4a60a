"""See what the model sees (paper section 4.5, Figures 6 and 7).

Library functions return NumPy arrays; `vitlab.inspect.plots` draws them and
`vitlab.inspect.report.inspect_model` writes every figure with an index.html:

    import vitlab
    from vitlab.inspect import collect_attention, attention_rollout
    model = vitlab.load_checkpoint("runs/demo/last.safetensors")
    attn, out = collect_attention(model, images)          # per block (B, heads, N, N)
    maps = attention_rollout(attn, out["grid"], model.cfg.num_prefix_tokens, model.cfg.pool)
"""

from vitlab.inspect.attention import (
    InspectError,
    attention_rollout,
    collect_attention,
    distillation_token_index,
    head_attention,
    mean_attention_distance,
    patch_distances,
    rollout_matrix,
)
from vitlab.inspect.embeddings import (
    FilterComponents,
    PositionSimilarity,
    cosine_similarity_grid,
    patch_embedding_components,
    position_embedding_similarity,
    position_embeddings,
)

__all__ = [
    "FilterComponents",
    "InspectError",
    "PositionSimilarity",
    "attention_rollout",
    "collect_attention",
    "cosine_similarity_grid",
    "distillation_token_index",
    "head_attention",
    "mean_attention_distance",
    "patch_distances",
    "patch_embedding_components",
    "position_embedding_similarity",
    "position_embeddings",
    "rollout_matrix",
]
