"""The shape of a semantic ID, shared by every config that carries ``level_sizes``."""

from __future__ import annotations

import torch
from torch import nn


class SidShape:
    """Mixin for configs with ``level_sizes`` (codes per SID level, the dedup level included)."""

    level_sizes: tuple[int, ...]

    sid_len = property(lambda self: len(self.level_sizes), doc="``D``: codes per item.")
    k_max = property(lambda self: max(self.level_sizes),
                     doc="The widest level: the width of every logits row and mask the decoder sees.")


def code_table_layout(level_sizes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each level's codes sit in one shared code table of ``sum(level_sizes)`` rows.

    Returns ``offsets`` [D] (first row of each level), ``sizes`` [D] and ``valid`` [D, K_max]
    (code ``c`` exists at level ``l`` iff ``c < sizes[l]``).
    """
    sizes = torch.tensor(tuple(level_sizes), dtype=torch.long)                         # [D]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])      # [D]
    valid = torch.arange(int(sizes.max()))[None, :] < sizes[:, None]                   # [D, K_max]
    return offsets, sizes, valid


class CodeTableModule(nn.Module):
    """Base of modules that embed or predict SID codes from one shared table (see :func:`code_table_layout`).

    Buffers: ``level_offsets`` [D], ``level_sizes_t`` [D], ``code_valid`` [D, K_max] (not saved: derived).
    """

    def __init__(self, level_sizes) -> None:
        super().__init__()
        offsets, sizes, valid = code_table_layout(level_sizes)
        self.register_buffer("level_offsets", offsets, persistent=False)
        self.register_buffer("level_sizes_t", sizes, persistent=False)
        self.register_buffer("code_valid", valid, persistent=False)
