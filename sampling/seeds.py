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

# numpy's SeedSequence (O'Neill's seed_seq hash, pool of 4 uint32 words) computed for a whole batch
# of [seed, index] entropies at once: one SeedSequence object per sample cost ~20 us, most of a
# batch's noise set-up. The constants are the hash's; a test checks bit-identity against numpy.
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _POOL = 0xCA01F9DD, 0x4973F715, 4
_U32 = 0xFFFFFFFF


def _seed_states(seed: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two uint32 words of SeedSequence([seed, i]).generate_state for every i (as uint64 arrays)."""
    k = np.uint64(_INIT_A)

    def hashmix(v):
        nonlocal k
        v = v ^ k
        k = (k * np.uint64(_MULT_A)) & np.uint64(_U32)
        v = (v * k) & np.uint64(_U32)
        return v ^ (v >> np.uint64(16))

    def mix(a, b):
        r = (np.uint64(_MIX_L) * a - np.uint64(_MIX_R) * b) & np.uint64(_U32)
        return r ^ (r >> np.uint64(16))

    zero = np.zeros_like(indices)
    entropy = [np.full_like(indices, seed), indices, zero, zero]  # pool words past the entropy hash 0
    pool = [hashmix(e) for e in entropy]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    out, k = [], np.uint64(_INIT_B)
    for word in pool[:2]:
        v = word ^ k
        k = (k * np.uint64(_MULT_B)) & np.uint64(_U32)
        v = (v * k) & np.uint64(_U32)
        out.append(v ^ (v >> np.uint64(16)))
    return out[0], out[1]


def _seed_state_numpy(seed: int, index: int) -> tuple[int, int]:
    s = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int(s[0]), int(s[1])


def sample_seeds(seed: int, indices) -> list[int]:
    """A 63-bit generator seed for each index that depends only on (seed, index)."""
    idx = [int(i) for i in indices]
    if 0 <= int(seed) <= _U32 and all(0 <= i <= _U32 for i in idx):
        with np.errstate(over="ignore"):
            s0, s1 = _seed_states(int(seed), np.asarray(idx, dtype=np.uint64))
        states = zip(s0.tolist(), s1.tolist())
    else:  # entropy words beyond 32 bits (or negative, which numpy rejects): numpy's own SeedSequence
        states = (_seed_state_numpy(seed, i) for i in idx)
    return [((a << 31) ^ b) & ((1 << 63) - 1) for a, b in states]


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed that depends only on (seed, index)."""
    return sample_seeds(seed, [index])[0]


def draw_rows(gens, shape, dtype, device) -> torch.Tensor:
    """One N(0, I) draw of the given shape from each generator, stacked."""
    # normal_ into each sample's slice of one buffer: the same numbers as torch.randn per sample
    # and a stack, without the per-sample tensors
    device = torch.device(device)
    out = torch.empty((len(gens), *shape), dtype=DRAW_DTYPE, pin_memory=device.type == "cuda")
    for row, g in zip(out, gens):
        row.normal_(generator=g)
    # non_blocking: a blocking host-to-GPU copy waits for every kernel queued before it (a host sync per draw);
    # from pinned memory the copy is queued behind them, and torch keeps the buffer until it has run
    return out.to(device=device, dtype=dtype, non_blocking=True)


class SampleNoise:
    """Standard normal draws for a batch of samples with their own streams.

    `seeds`, if given, are sample_seeds(seed, indices), computed once for a whole run by the caller
    (one vectorised call for every index costs about what one batch's does).
    """

    def __init__(self, seed: int, indices, shape, dtype=torch.float64, device="cpu", seeds=None):
        self.seed = int(seed)
        self.indices = [int(i) for i in indices]
        self.shape = tuple(shape)
        self.dtype, self.device = dtype, torch.device(device)
        seeds = sample_seeds(seed, self.indices) if seeds is None else seeds
        self._gens = [torch.Generator().manual_seed(s) for s in seeds]

    def draw(self) -> torch.Tensor:
        """One fresh N(0, I) tensor of shape (batch, *shape)."""
        return draw_rows(self._gens, self.shape, self.dtype, self.device)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        return self.draw().to(dtype=x.dtype)
