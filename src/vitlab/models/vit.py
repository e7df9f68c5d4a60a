"""The Vision Transformer (paper section 3.1), and its hybrid with a CNN stem."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitlab.errors import ConfigError
from vitlab.models.base import VitlabModule
from vitlab.models.config import ViTConfig, _pair
from vitlab.models.layers import Block, PatchEmbed, posemb_sincos_2d, resample_pos_embed


class VisionTransformer(nn.Module, VitlabModule):
    """ViT: patch embedding, class token, position embeddings, L pre-norm blocks, a head.

    Forward runs in stages: `forward_features` (tokens after the final LayerNorm) -> `pool`
    (class token or global average) -> `forward_head` (pre-logits and classifier).
    `forward_intermediates` returns every block's tokens and attention probabilities.
    With `cfg.distill_token` (DeiT) a distillation token follows the class token and feeds its
    own head, `head_dist`; `forward` returns the mean of both heads' logits, `forward_heads`
    each head's (what distillation training needs).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        if cfg.backbone is None:
            self.patch_embed: nn.Module = PatchEmbed(cfg.patch_size, cfg.in_chans, D)
        else:
            from vitlab.models.resnet import HybridEmbed

            self.patch_embed = HybridEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distill_token else None
        grid = cfg.grid_size()
        if cfg.pos_embed == "learn":
            n = grid[0] * grid[1] + (cfg.num_prefix_tokens if cfg.pos_embed_cls else 0)
            self.pos_embed = nn.Parameter(torch.zeros(1, n, D))
        else:
            self.register_buffer("pos_embed", posemb_sincos_2d(grid, D), persistent=False)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = [
            cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)
        ]  # linear rule
        self.blocks = nn.Sequential(
            *[
                Block(
                    D,
                    cfg.num_heads,
                    cfg.mlp_dim,
                    qkv_bias=cfg.qkv_bias,
                    eps=cfg.layer_norm_eps,
                    act=cfg.act,
                    drop=cfg.drop_rate,
                    attn_drop=cfg.attn_drop_rate,
                    drop_path=p,
                )
                for p in dpr
            ]
        )
        norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.norm = nn.Identity() if cfg.fc_norm else norm
        self.fc_norm = norm if cfg.fc_norm else nn.Identity()
        rep = cfg.representation_size
        self.pre_logits = (
            nn.Sequential(OrderedDict(fc=nn.Linear(D, rep), act=nn.Tanh()))
            if rep
            else nn.Identity()
        )
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(rep or D, cfg.num_classes) if cfg.num_classes else nn.Identity()
        if cfg.distill_token:
            self.head_dist = nn.Linear(D, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.grad_checkpointing = False
        self.distilled_training = False
        if self.pos_embed.device.type != "meta":  # meta tensors hold no values to initialise
            self.init_weights()

    # ----------------------------------------------------------------------------------- init
    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference (vit_jax) initialisation: Xavier-uniform linears, tiny MLP biases,
        N(0, 0.02) position embeddings, zero class token, zero head when `cfg.zero_head`; the
        distillation token N(0, 0.02) as in DeiT (a zero one would start as the class token)."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.endswith("qkv"):  # three D x D kernels fused: bound of each
                    bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    if ".mlp." in f".{name}.":
                        nn.init.normal_(m.bias, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
        if isinstance(self.patch_embed, PatchEmbed):
            w = self.patch_embed.proj.weight
            fan_in = w[0].numel()
            nn.init.trunc_normal_(w, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978)
            nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        if self.dist_token is not None:
            nn.init.normal_(self.dist_token, std=0.02)
        if self.cfg.zero_head:
            for head in self._heads():
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def _heads(self) -> list[nn.Linear]:
        """The classifier(s): `head`, and `head_dist` with a distillation token."""
        heads = [self.head, getattr(self, "head_dist", None)]
        return [h for h in heads if isinstance(h, nn.Linear)]

    def reset_classifier(
        self, num_classes: int, class_names: tuple[str, ...] | None = None
    ) -> None:
        """A new zero-initialised head for `num_classes` (paper section 3.2, fine-tuning)."""
        from vitlab.models.config import replace

        self.cfg = replace(self.cfg, num_classes=num_classes, class_names=class_names)
        dev = self.pos_embed.device
        in_dim = self.cfg.representation_size or self.cfg.embed_dim
        self.head = nn.Linear(in_dim, num_classes, device=dev) if num_classes else nn.Identity()
        if self.cfg.distill_token:
            D = self.cfg.embed_dim
            self.head_dist = nn.Linear(D, num_classes, device=dev) if num_classes else nn.Identity()
        for head in self._heads():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    # -------------------------------------------------------------------------------- forward
    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        cfg = self.cfg
        # Under torch.export with a dynamic image size the grid is symbolic: comparing it would
        # fix the graph to the native size, so the resampling (the identity there) is traced.
        tracing_any_size = cfg.dynamic_img_size and torch.compiler.is_exporting()
        if grid == cfg.grid_size() and not tracing_any_size:
            return self.pos_embed
        if cfg.pos_embed == "sincos":
            return posemb_sincos_2d(grid, cfg.embed_dim, dtype=self.pos_embed.dtype).to(
                self.pos_embed.device
            )
        if not cfg.dynamic_img_size:
            s = cfg.feature_stride
            raise ConfigError(
                f"input of {grid[0] * s}x{grid[1] * s} px does not match the model's "
                f"{cfg.img_size} px; resize the input, call model.set_image_size(...), "
                "or build the model with dynamic_img_size=True"
            )
        prefix = cfg.num_prefix_tokens if cfg.pos_embed_cls else 0
        return resample_pos_embed(self.pos_embed, grid, cfg.grid_size(), prefix)

    def embed_patches(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The parts of equation 1 before they are joined: (B, N, D) patch tokens, their (1, N, D)
        position embeddings, and the (1, P, D) prefix tokens (the class token, then DeiT's
        distillation token) with their own position embeddings (None without any). Masked
        pre-training (`vitlab.train.selfsup`) corrupts or drops patch tokens between these and
        `forward_tokens`."""
        x = self.patch_embed(x)  # (B, gh, gw, D)
        B, gh, gw, D = x.shape
        pos = self._pos_embed_for((gh, gw))  # (1, N or P + N, D)
        n = gh * gw
        x = x.reshape(B, n, D)  # (B, N, D)
        tokens = [t for t in (self.cls_token, self.dist_token) if t is not None]
        prefix = torch.cat(tokens, dim=1) if tokens else None  # (1, P, D)
        if prefix is not None and pos.shape[1] > n:  # their own position embeddings (vit_jax)
            prefix = prefix + pos[:, : pos.shape[1] - n]
        return x, pos[:, pos.shape[1] - n :], prefix

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Equation 1: patches -> tokens, prefix tokens prepended, position embeddings added."""
        x, pos, prefix = self.embed_patches(x)
        x = x + pos
        if prefix is not None:
            x = torch.cat([prefix.expand(x.shape[0], -1, -1), x], dim=1)  # (B, P + N, D)
        return self.pos_drop(x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, D) embedded tokens (any subset of them) -> the same after the L blocks and the
        final LayerNorm (equations 2-4)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N(+1), D) tokens after the final LayerNorm."""
        return self.forward_tokens(self.embed(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only each block's input during training and recompute the rest in the backward
        pass: activation memory falls from O(depth x block) to O(depth + block), for about one
        extra forward of compute. For the large variants on small memories."""
        self.grad_checkpointing = enable

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N(+1), D) -> (B, D): the class token, or the mean of the patch tokens."""
        if self.cfg.pool == "token":
            return x[:, 0]
        return x[:, self.cfg.num_prefix_tokens :].mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, D) pooled features -> (B, num_classes) logits (or the pre-logits features)."""
        x = self.pre_logits(self.fc_norm(x))
        return x if pre_logits else self.head(self.head_drop(x))

    def forward_dist_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D) final tokens -> (B, num_classes) logits of the distillation head, read
        from the distillation token (DeiT)."""
        t = x[:, int(bool(self.cfg.class_token))]  # (B, D): the token after the class token
        return self.head_dist(self.head_drop(self.fc_norm(t)))

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> the class head's and the distillation head's (B, num_classes) logits;
        without a distillation token, the class head's logits twice (plain distillation)."""
        feats = self.forward_features(x)
        logits = self.forward_head(self.pool(feats))
        if self.dist_token is None:
            return logits, logits
        return logits, self.forward_dist_head(feats)

    def set_distilled_training(self, enable: bool = True) -> None:
        """With a distillation token: in training mode, `forward` returns both heads' logits
        (class, distillation), which distillation training needs (and DDP sees as one forward);
        in eval mode it still returns their mean."""
        self.distilled_training = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.dist_token is None:
            return self.forward_head(self.pool(self.forward_features(x)))
        cls_logits, dist_logits = self.forward_heads(x)
        if self.distilled_training and self.training:
            return cls_logits, dist_logits
        return (cls_logits + dist_logits) / 2  # DeiT's inference: the mean of the two heads

    def forward_intermediates(self, x: torch.Tensor, return_attn: bool = True) -> dict[str, Any]:
        """Every named activation, for inspection.

        Returns a dict with `embed` (B, N, D) tokens entering block 0, `blocks` (a list of
        (B, N, D) tokens after each block), `attn` (a list of (B, heads, N, N) attention
        probabilities, rows summing to 1; empty when `return_attn=False`), `norm` (tokens after
        the final LayerNorm), `pooled` (B, D), `pre_logits` and `logits`. N counts the prefix
        tokens (class, distillation) when the model has them; `grid` is the (gh, gw) patch grid.
        With a distillation token, `logits` is the mean of `logits_cls` and `logits_dist`.
        """
        out: dict[str, Any] = {"blocks": [], "attn": []}
        tokens = self.embed(x)
        out["embed"] = tokens
        out["grid"] = self.cfg.grid_size(tuple(x.shape[-2:]))
        for blk in self.blocks:
            if return_attn:
                tokens, attn = blk(tokens, return_attn=True)
                out["attn"].append(attn)
            else:
                tokens = blk(tokens)
            out["blocks"].append(tokens)
        out["norm"] = self.norm(tokens)
        out["pooled"] = self.pool(out["norm"])
        out["pre_logits"] = self.forward_head(out["pooled"], pre_logits=True)
        out["logits"] = self.head(out["pre_logits"])
        if self.dist_token is not None:
            out["logits_cls"] = out["logits"]
            out["logits_dist"] = self.forward_dist_head(out["norm"])
            out["logits"] = (out["logits_cls"] + out["logits_dist"]) / 2
        return out

    # ----------------------------------------------------------------------------- resolution
    @torch.no_grad()
    def set_image_size(
        self, img_size: int | tuple[int, int], mode: str = "bicubic", antialias: bool = True
    ) -> None:
        """Change the native resolution once, resampling learned position embeddings over the
        patch grid (paper section 3.2: fine-tuning at higher resolution)."""
        from vitlab.models.config import replace

        h, w = _pair(img_size)
        if h != w:
            raise ConfigError(f"only square resolutions are stored in the config, got {h}x{w}")
        new_cfg = replace(self.cfg, img_size=h)
        grid, old_grid = new_cfg.grid_size(), self.cfg.grid_size()
        if self.cfg.pos_embed == "learn":
            prefix = self.cfg.num_prefix_tokens if self.cfg.pos_embed_cls else 0
            new = resample_pos_embed(self.pos_embed.data, grid, old_grid, prefix, mode, antialias)
            self.pos_embed = nn.Parameter(new, requires_grad=self.pos_embed.requires_grad)
        else:
            self.pos_embed = posemb_sincos_2d(grid, self.cfg.embed_dim).to(self.pos_embed)
        self.cfg = new_cfg

    # ---------------------------------------------------------------------------------- facts
    def no_weight_decay(self) -> set[str]:
        """Parameter names that weight decay should skip (also: every bias and norm weight)."""
        return {"pos_embed", "cls_token", "dist_token"}
