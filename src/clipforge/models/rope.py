"""2-D rotary position embeddings for image tokens (EVA02; Fang et al. 2023, arXiv:2303.11331).

RoPE (Su et al. 2021) rotates each query/key channel pair by an angle proportional to the token's position,
so attention scores depend on relative offsets. EVA02 applies it axially on the patch grid: half of each head's
channel pairs rotate with the row index, half with the column index, and the class token is left unrotated.

This is timm's `RotaryEmbeddingCat` as EVA02 configures it (`in_pixels=False`, interleaved pairs, 'ij' grid),
rebuilt so that a checkpoint trained with timm gives the same numbers: frequencies 1 / theta^(i / B) for
i < B = head_dim / 4, integer grid coordinates, optionally rescaled onto a reference grid (`ref_grid`: EVA02-B/16
was pre-trained at a 16x16 grid and keeps those coordinates at 224 px, where its grid is 14x14).

The tables are computed in each forward from the grid size (a few hundred sin/cos values, negligible next to
attention), so they exist on whatever device and for whatever input size the tower runs at, and there is no
buffer that a meta-device build or a state-dict load could leave uninitialised.
"""

from __future__ import annotations

import torch


def rope_tables(
    grid: tuple[int, int],
    head_dim: int,
    *,
    ref_grid: int | None = None,
    theta: float = 10000.0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos) tables, each (grid_h * grid_w, head_dim) in float32, rows in row-major patch order.

    Channel layout is interleaved: pair (2j, 2j+1) shares angle j; the first head_dim / 2 channels follow the row
    coordinate and the rest the column coordinate (timm's `build_rotary_pos_embed`).
    """
    if head_dim % 4:
        raise ValueError(f"2-D rotary embeddings need a head width divisible by 4, got {head_dim}")
    bands = head_dim // 4
    exponent = torch.arange(bands, dtype=torch.int64, device=device).to(torch.float32) / bands
    freqs = 1.0 / (theta**exponent)  # (B,)
    axes = []
    for size in grid:
        t = torch.arange(size, dtype=torch.int64, device=device).to(torch.float32)
        if ref_grid is not None:
            t = t / size * ref_grid  # EVA's scheme: coordinates span the pre-training grid at any resolution
        axes.append(t)
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (gh, gw, 2)
    angles = coords.unsqueeze(-1) * freqs  # (gh, gw, 2, B)
    angles = angles.flatten(-2).flatten(0, -2)  # (N, 2B): row angles then column angles
    angles = angles.repeat_interleave(2, dim=-1)  # (N, head_dim): each angle drives one channel pair
    return angles.sin(), angles.cos()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """[x0, x1, x2, x3, ...] -> [-x1, x0, -x3, x2, ...]: a quarter turn of every interleaved channel pair."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., N, head_dim) by the tables (N, head_dim), or by per-image tables (B, 1, N, head_dim) that
    broadcast over x (B, heads, N, head_dim) (patch dropout gathers them by keep indices); the result has x's dtype."""
    return (x * cos + rotate_pairs(x) * sin).to(x.dtype)
