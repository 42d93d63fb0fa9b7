"""Per-sample randomness, EDM style: everything random about sample i comes from (seed, i).

Each sample owns a CPU generator. Its first draw is the initial noise; every later draw
(per-step noise of stochastic solvers) continues the same stream. A batch just stacks the
draws of its samples, so results cannot depend on batch size, sharding or device.

Draws are always made in float32 and then cast (as EDM's StackedRandomGenerator does), so a
float64 run starts from the same noise as a float32 run, only held in more precision; drawing
in the run's dtype would give unrelated streams.
"""
from __future__ import annotations

import numpy as np
import torch

DRAW_DTYPE = torch.float32  # one fixed draw dtype: the noise must not depend on the run's dtype


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed that depends only on (seed, index)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class SampleNoise:
    """Standard normal draws for a batch of samples with their own streams."""

    def __init__(self, seed: int, indices, shape, dtype=torch.float64, device="cpu"):
        self.indices = [int(i) for i in indices]
        self.shape = tuple(shape)
        self.dtype, self.device = dtype, torch.device(device)
        self._gens = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in self.indices]

    def draw(self) -> torch.Tensor:
        """One fresh N(0, I) tensor of shape (batch, *shape)."""
        out = torch.stack([torch.randn(self.shape, generator=g, dtype=DRAW_DTYPE) for g in self._gens])
        return out.to(device=self.device, dtype=self.dtype)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        return self.draw().to(dtype=x.dtype)
