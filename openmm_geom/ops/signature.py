"""Truncated path signatures and log-signatures in pure torch (scriptable, autograd).

A path is a tensor ``(batch, length, channels)`` of points joined by straight lines. Its
depth-N signature is the collection of iterated integrals

    S^k = ∫_{0<t1<...<tk<1} dx_{t1} ⊗ ... ⊗ dx_{tk},    k = 1..N,

returned as one flat vector per path, level by level, each level flattened with the index
``i1*C^(k-1) + ... + ik`` (the layout of pysiglib and signatory; no scalar term).

How it is computed
------------------
Along a piecewise-linear path the signature up to point j+1 follows from the one up to
point j and the increment d_j (Chen's identity with exp(d_j))::

    S^m(j+1) = S^m(j) + Q^{m-1}(j) ⊗ d_j,
    Q^{m-1}(j) = S^{m-1}(j) + S^{m-2}(j) ⊗ d_j / 2! + ... + d_j^{⊗(m-1)} / m!   (Horner form)

so the level-m increments of a block of time steps are computed at once and the running
signature follows by a cumulative sum over time, for every level below the top. The top
level is never materialised per time step: its total is one batched matrix product
``sum_j Q^{N-1}(j) ⊗ d_j``. Time is processed in blocks whose size keeps the per-step
tensors inside a memory budget, so there are few Python-level iterations and the heavy work
is a BLAS product, yet memory stays bounded. The same recursion started from a stored
signature extends it with new points (:class:`SignatureStream`): Chen's identity, no
recomputation from the start.

The log-signature is the tensor logarithm of the signature expressed in the Lyndon-word
coordinates (the coefficient of each Lyndon word in log S, Lyndon words sorted by length and
then lexicographically): pysiglib's ``method=1`` and signatory's default ``"words"`` mode,
which carry the same information as the signature in ``logsignature_channels`` numbers.

Native kernel (the default, ``native=True``): on CPU the signature is computed by
``torch.ops.openmm_geom.signature_native`` (``cpp/ops/signature.cpp``): the same Chen/Horner
recursion one step at a time in one contiguous buffer per path, paths spread over threads,
and a backward pass that rebuilds the running signature from the end with the inverse
segment exponentials, so no per-step tensor is stored: memory is O(batch x signature size)
at any length. Double backward (``create_graph=True``) is refused by the kernel with a clear
error; ``native=False`` runs the pure-torch recursion below, which supports it and is the
reference the kernel is tested against.

Memory: the output has ``signature_channels(C, N)`` numbers per path; with autograd the
pure-torch backward pass keeps ``~3 * length * sum_{k<N} C^k`` numbers per path (the kernel:
the path's gradient and two signature-sized buffers). Both are checked against ``max_bytes``
before any work, with an error that states the size needed.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

__all__ = [
    "signature", "logsignature", "signature_channels", "logsignature_channels",
    "signature_levels", "levels_to_logsignature", "lyndon_word_indices", "time_augment",
    "lead_lag", "basepoint", "windowed_signature", "windowed_logsignature",
    "SignatureStream", "signature_memory_bytes", "DEFAULT_MAX_BYTES",
]

# Default refusal threshold for one call (bytes); callers with more memory pass max_bytes.
DEFAULT_MAX_BYTES: int = 8 * 1073741824


def _checkpoint_bytes() -> int:
    # Above this much recorded autograd state a differentiable call recomputes blocks in the
    # backward pass. A function, not a global: TorchScript cannot read Python globals.
    return 1073741824


CHECKPOINT_BYTES: int = _checkpoint_bytes()  # for reading; the op uses _checkpoint_bytes()


def _block_elements() -> int:
    # Budget (elements) of the per-block working tensors; sets the block length along time.
    return 8388608


def _ipow(base: int, exponent: int) -> int:
    # TorchScript's int ** int is a float; signature sizes must stay exact integers.
    result = 1
    for _ in range(exponent):
        result *= base
    return result


def _gib(size: int) -> str:
    return str(float(int(float(size) / 1073741824.0 * 100.0 + 0.5)) / 100.0) + " GiB"


def signature_channels(channels: int, depth: int) -> int:
    """Length of the depth-``depth`` signature of a ``channels``-dimensional path (no scalar)."""
    _check_depth_channels(channels, depth)
    total = 0
    for k in range(1, depth + 1):
        total += _ipow(channels, k)
    return total


def _mobius(n: int) -> int:
    result = 1
    p = 2
    while p * p <= n:
        if n % p == 0:
            n //= p
            if n % p == 0:
                return 0
            result = -result
        p += 1
    if n > 1:
        result = -result
    return result


def logsignature_channels(channels: int, depth: int) -> int:
    """Number of Lyndon words of length 1..depth over ``channels`` letters (Witt's formula)."""
    _check_depth_channels(channels, depth)
    total = 0
    for k in range(1, depth + 1):
        words = 0
        for d in range(1, k + 1):
            if k % d == 0:
                words += _mobius(k // d) * _ipow(channels, d)
        total += words // k
    return total


def _check_depth_channels(channels: int, depth: int) -> None:
    if depth < 1:
        raise ValueError("signature depth must be >= 1, got " + str(depth))
    if channels < 1:
        raise ValueError("a path needs at least one channel, got " + str(channels))


def signature_memory_bytes(batch: int, length: int, channels: int, depth: int,
                           itemsize: int = 4, requires_grad: bool = False,
                           native: bool = False) -> int:
    """Bytes one signature call needs: output plus working tensors.

    ``native=True`` (the kernel): the output, and with autograd the path's gradient and two
    more signature-sized buffers (the running signature and its gradient), whatever the
    length. ``native=False`` (pure torch): without autograd the working set is one block of
    time steps. With autograd, plain
    recording keeps every step's levels for the backward pass; when that would exceed
    :data:`CHECKPOINT_BYTES` the op recomputes each block during the backward pass instead
    (activation checkpointing) and keeps only the levels at block boundaries, and this
    estimate follows the strategy the op will use.
    """
    _check_depth_channels(channels, depth)
    output = batch * signature_channels(channels, depth)
    if native:
        if not requires_grad:
            return output * itemsize
        return (4 * output + 2 * batch * length * channels) * itemsize
    steps = max(length - 1, 1)
    block = _block_length(batch, channels, depth, steps)
    per_step = _per_step_elements(channels, depth)
    if not requires_grad:
        return (output + batch * block * per_step) * itemsize
    recorded = _recorded_bytes(batch, length, channels, depth, itemsize)
    if recorded <= _checkpoint_bytes():
        return recorded
    return _checkpointed_bytes(batch, steps, channels, depth, itemsize)


def _recorded_bytes(batch: int, length: int, channels: int, depth: int, itemsize: int) -> int:
    # Output plus every step's levels, as plain autograd recording keeps them.
    steps = max(length - 1, 1)
    return (batch * signature_channels(channels, depth)
            + batch * steps * _per_step_elements(channels, depth)) * itemsize


def _per_step_elements(channels: int, depth: int) -> int:
    # Per time step the recursion keeps levels up to _widest_step_level (a few copies each).
    per_step = 0
    for k in range(1, _widest_step_level(depth) + 1):
        per_step += _ipow(channels, k)
    return 2 * depth * (per_step + 1)


def _checkpoint_segment(batch: int, steps: int, channels: int, depth: int) -> int:
    """Steps per recomputed segment (a whole number of blocks).

    Memory is (segments x levels) at the boundaries plus one segment recorded during its
    recomputation; a segment of about sqrt(steps x output / per-step) steps balances the two.
    """
    block = _block_length(batch, channels, depth, steps)
    ratio = float(steps) * float(signature_channels(channels, depth)) \
        / float(_per_step_elements(channels, depth))
    segment_blocks = max(1, int(ratio ** 0.5 / float(block) + 0.5))
    return min(steps, segment_blocks * block)


def _checkpointed_bytes(batch: int, steps: int, channels: int, depth: int, itemsize: int) -> int:
    segment = _checkpoint_segment(batch, steps, channels, depth)
    segments = (steps + segment - 1) // segment
    output = batch * signature_channels(channels, depth)
    return ((segments + 2) * output
            + batch * segment * _per_step_elements(channels, depth)) * itemsize


def _check_path(path: torch.Tensor, depth: int, max_bytes: int, native: bool = False) -> None:
    if path.dim() != 3:
        raise ValueError("path must have shape (batch, length, channels), got "
                         + str(list(path.shape)))
    if path.size(1) < 2:
        raise ValueError("a path needs at least 2 points to have increments, got length "
                         + str(path.size(1)))
    # One reduction instead of an elementwise test: any NaN/inf makes the sum non-finite.
    # The kernel checks each path itself before its sweep (no extra pass over memory).
    if not native and not bool(torch.isfinite(path.sum())):
        raise ValueError("path contains NaN or infinite values")
    if native:
        needed = signature_memory_bytes(path.size(0), path.size(1), path.size(2), depth,
                                        path.element_size(), path.requires_grad, True)
    elif torch.jit.is_scripting() and path.requires_grad:
        # TorchScript runs without checkpointing: every step's levels are recorded.
        needed = _recorded_bytes(path.size(0), path.size(1), path.size(2), depth,
                                 path.element_size())
    else:
        needed = signature_memory_bytes(path.size(0), path.size(1), path.size(2), depth,
                                        path.element_size(), path.requires_grad)
    if needed > max_bytes:
        raise ValueError(
            "signature of depth " + str(depth) + " for " + str(path.size(0)) + " paths of "
            + str(path.size(1)) + " points and " + str(path.size(2)) + " channels would need "
            + _gib(needed) + " (limit " + _gib(max_bytes) + "): lower the depth or the channel "
            "count, split the batch, or pass a larger max_bytes")


def _outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Flattened tensor product over the last axis: (..., p), (..., q) -> (..., p*q)."""
    out = a.unsqueeze(-1) * b.unsqueeze(-2)
    return out.reshape(a.shape[:-1] + (a.size(-1) * b.size(-1),))


def _horner(prefix: List[torch.Tensor], d: torch.Tensor, m: int) -> torch.Tensor:
    """Q^{m-1} = P^{m-1} + P^{m-2} ⊗ d/2! + ... + d^{⊗(m-1)}/m!, per time step."""
    v = prefix[0]
    for r in range(1, m):
        # Scaling the small factor instead of the product saves a pass over the product.
        scaled = d / float(m - r + 1)
        v = prefix[r] + (scaled if r == 1 else _outer(v, scaled))
    return v


def _extend(levels: List[torch.Tensor], points: torch.Tensor, depth: int,
            block: int) -> List[torch.Tensor]:
    """Signature levels after appending the straight segments joining ``points`` (B, n+1, C).

    Per block of time steps: levels 1..N-2 step by step (cumulative sums); level N-1 as one
    product over time; level N without per-step level-(N-1) tensors, by summing the
    level-(N-1) increments against the remaining path R_k = sum_{j>k} d_j:

        S^N = S0^N + S0^{N-1} ⊗ D + sum_k sum_{a<=N-2} P^a(k) ⊗ d_k^{⊗m} ⊗ (R_k/m! + d_k/(m+1)!),

    m = N-1-a, each term one batched matrix product over time whose two factors are split
    near level N/2, so no per-step tensor exceeds level max(N-2, ceil(N/2)).
    """
    batch = points.size(0)
    steps = points.size(1) - 1
    state = levels
    start = 0
    while start < steps:
        # Level 1 and the remaining path come straight from the points (no cumulative sums).
        block_points = points[:, start:start + block + 1]
        d = block_points[:, 1:] - block_points[:, :-1]
        c = d.size(1)
        total = block_points[:, -1] - block_points[:, 0]
        if depth == 1:
            state = [state[0] + total]
            start += c
            continue
        prefix: List[torch.Tensor] = [torch.ones(batch, c, 1, dtype=d.dtype, device=d.device)]
        new_state: List[torch.Tensor] = []
        if depth > 2:
            prefix.append(state[0].unsqueeze(1) + (block_points[:, :-1] - block_points[:, :1]))
            new_state.append(state[0] + total)
        for m in range(2, depth - 1):
            step_terms = _outer(_horner(prefix, d, m), d)
            running = torch.cumsum(step_terms, dim=1)
            prefix.append(state[m - 1].unsqueeze(1) + running - step_terms)
            new_state.append(state[m - 1] + running[:, -1])
        below_top = _horner(prefix, d, depth - 1)
        new_state.append(state[depth - 2] + torch.bmm(below_top.transpose(1, 2), d).reshape(batch, -1))

        remaining = block_points[:, -1:] - block_points[:, 1:]
        top = state[depth - 1] + _outer(state[depth - 2], total)
        products: List[torch.Tensor] = []
        factorial = 1.0
        for m in range(1, depth):
            factorial *= float(m)
            a = depth - 1 - m
            y = remaining / factorial + d / (factorial * float(m + 1))
            split = min(max(depth // 2 - a, 0), m)
            if a == 0:
                left = d
                for _ in range(split - 1):
                    left = _outer(left, d)
            else:
                left = prefix[a]
                for _ in range(split):
                    left = _outer(left, d)
            right = y
            for _ in range(m - split):
                right = _outer(d, right)
            # Terms with equal factor sizes accumulate into one product (no concatenation).
            merged = False
            for i in range(len(products)):
                if products[i].size(1) == left.size(-1) and not merged:
                    products[i] = torch.baddbmm(products[i], left.transpose(1, 2), right)
                    merged = True
            if not merged:
                products.append(torch.bmm(left.transpose(1, 2), right))
        for product in products:
            top = top + product.reshape(batch, -1)
        new_state.append(top)
        state = new_state
        start += c
    return state


def _widest_step_level(depth: int) -> int:
    return max(depth - 2, (depth + 1) // 2, 1)


def _block_length(batch: int, channels: int, depth: int, steps: int) -> int:
    per_step = batch * depth * _ipow(channels, _widest_step_level(depth))
    return max(1, min(steps, _block_elements() // max(1, per_step)))


def _zero_levels(batch: int, channels: int, depth: int, like: torch.Tensor) -> List[torch.Tensor]:
    levels: List[torch.Tensor] = []
    for k in range(1, depth + 1):
        levels.append(torch.zeros(batch, _ipow(channels, k), dtype=like.dtype, device=like.device))
    return levels


def _uses_kernel(path: torch.Tensor, native: bool) -> bool:
    # the kernel is CPU-only and computes in float32 or float64
    return native and path.device.type == "cpu" and (path.dtype == torch.float32
                                                     or path.dtype == torch.float64)


def signature_levels(path: torch.Tensor, depth: int, max_bytes: int = DEFAULT_MAX_BYTES,
                     native: bool = True) -> List[torch.Tensor]:
    """Signature of each path as a list of levels ``[(B, C), (B, C^2), ..., (B, C^depth)]``.

    ``native``: the compiled kernel (default) or the pure-torch reference (see the module).
    """
    if _uses_kernel(path, native):
        return _split_levels(_signature_flat(path, depth, max_bytes, native), path.size(-1),
                             depth)
    return _reference_levels(path, depth, max_bytes)


def _reference_levels(path: torch.Tensor, depth: int, max_bytes: int) -> List[torch.Tensor]:
    _check_depth_channels(path.size(-1), depth)
    _check_path(path, depth, max_bytes, False)
    batch, length, channels = path.size(0), path.size(1), path.size(2)
    block = _block_length(batch, channels, depth, length - 1)
    levels = _zero_levels(batch, channels, depth, path)
    if not torch.jit.is_scripting():
        if path.requires_grad and torch.is_grad_enabled() and _records_too_much(
                batch, length, channels, depth, path.element_size()):
            return _extend_checkpointed(levels, path, depth, block)
    return _extend(levels, path, depth, block)


def _records_too_much(batch: int, length: int, channels: int, depth: int, itemsize: int) -> bool:
    return _recorded_bytes(batch, length, channels, depth, itemsize) > _checkpoint_bytes()


def _extend_block(points: torch.Tensor, depth: int, block: int, *levels: torch.Tensor):
    return tuple(_extend(list(levels), points, depth, block))


@torch.jit.unused
def _extend_checkpointed(levels: List[torch.Tensor], points: torch.Tensor, depth: int,
                         block: int) -> List[torch.Tensor]:
    """:func:`_extend` segment by segment, each segment recomputed in the backward pass.

    Memory for the backward pass then holds the levels at segment boundaries and one
    segment's recorded steps instead of every step's, at the price of a second forward pass.
    """
    from torch.utils.checkpoint import checkpoint

    steps = points.size(1) - 1
    segment = _checkpoint_segment(points.size(0), steps, points.size(2), depth)
    for start in range(0, steps, segment):
        chunk = points[:, start:start + segment + 1]
        levels = list(checkpoint(_extend_block, chunk, depth, block, *levels,
                                 use_reentrant=False))
    return levels


def signature(path: torch.Tensor, depth: int, max_bytes: int = DEFAULT_MAX_BYTES,
              native: bool = True) -> torch.Tensor:
    """Truncated signature of piecewise-linear paths.

    Parameters
    ----------
    path : torch.Tensor
        ``(batch, length, channels)``, length >= 2; float32 or float64. A single path
        ``(length, channels)`` is accepted and gives a 1-D result.
    depth : int
        Truncation level N >= 1.
    max_bytes : int
        Refuse (with the size needed) calls that would need more memory than this.
    native : bool
        Use the compiled CPU kernel (default); ``False`` runs the pure-torch reference,
        which also supports double backward (``create_graph=True``).

    Returns
    -------
    torch.Tensor
        ``(batch, signature_channels(channels, depth))``: levels 1..N, each flattened
        row-major (pysiglib's layout without the scalar term).

    Notes
    -----
    Memory (:func:`signature_memory_bytes`). The kernel: the output, and with autograd the
    path's gradient and two signature-sized buffers, at any length. Pure torch: without
    autograd, the output and one block of
    time steps. With autograd, paths whose recorded steps would exceed
    :data:`CHECKPOINT_BYTES` are differentiated segment by segment with activation
    checkpointing (eager mode; TorchScript records every step). On Linux, glibc's dynamic
    mmap threshold can keep the freed per-segment buffers resident, so the process's RSS
    may grow well beyond the live memory. ``MALLOC_MMAP_THRESHOLD_=1048576`` in the
    environment (set before Python starts) keeps it near the estimate but makes every large
    allocation a fresh mapping, which is slower. Measured with
    ``benchmarks/signature_checkpoint_cost.py --length 2000`` (256 paths of 2,000 points,
    8 channels, depth 4, forward + backward, 2 threads): 2.3 GB RSS growth and 2.8 s
    without it; 0.5 GB and 8.2 s with it; 0.33 GB estimated.
    """
    if path.dim() == 2:
        return _signature_flat(path.unsqueeze(0), depth, max_bytes, native).squeeze(0)
    return _signature_flat(path, depth, max_bytes, native)


def _signature_flat(path: torch.Tensor, depth: int, max_bytes: int, native: bool) -> torch.Tensor:
    """(B, signature_channels): the kernel's output as it is, or the reference's levels joined."""
    if not _uses_kernel(path, native):
        return torch.cat(_reference_levels(path, depth, max_bytes), dim=-1)
    _check_depth_channels(path.size(-1), depth)
    _check_path(path, depth, max_bytes, True)
    return torch.ops.openmm_geom.signature_native(path, depth, None)


def _split_levels(flat: torch.Tensor, channels: int, depth: int) -> List[torch.Tensor]:
    levels: List[torch.Tensor] = []
    offset = 0
    for k in range(1, depth + 1):
        size = _ipow(channels, k)
        levels.append(flat[..., offset:offset + size])
        offset += size
    return levels


def _tensor_product(a: List[torch.Tensor], b: List[torch.Tensor], depth: int) -> List[torch.Tensor]:
    """(a ⊗ b) truncated at ``depth`` for elements without scalar term (levels 1..depth)."""
    out: List[torch.Tensor] = []
    for k in range(1, depth + 1):
        if k == 1:
            out.append(torch.zeros_like(a[0]))
            continue
        total = _outer(a[0], b[k - 2])
        for i in range(2, k):
            total = total + _outer(a[i - 1], b[k - i - 1])
        out.append(total)
    return out


def lyndon_word_indices(channels: int, length: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Flat indices (within level ``length``) of the Lyndon words, in lexicographic order.

    A word is Lyndon when it is strictly smaller than each of its proper rotations; for words
    of one length the lexicographic order is the order of their flat indices, so the test is
    a comparison of integers.
    """
    size = _ipow(channels, length)
    index = torch.arange(size, dtype=torch.long, device=device)
    keep = torch.ones(size, dtype=torch.bool, device=device)
    for r in range(1, length):
        high = _ipow(channels, length - r)
        rotated = (index % high) * _ipow(channels, r) + torch.div(index, high, rounding_mode="floor")
        keep = keep & (index < rotated)
    return index[keep]


def levels_to_logsignature(levels: List[torch.Tensor], channels: int, depth: int) -> torch.Tensor:
    """Lyndon-word coordinates of log(S) for signature levels ``[(B, C^k)]``."""
    power = levels
    log_levels = levels
    for n in range(2, depth + 1):
        power = _tensor_product(power, levels, depth)
        coefficient = (1.0 if n % 2 == 1 else -1.0) / float(n)
        summed: List[torch.Tensor] = []
        for k in range(depth):
            summed.append(log_levels[k] + coefficient * power[k])
        log_levels = summed
    parts: List[torch.Tensor] = []
    for k in range(1, depth + 1):
        # the kernel library's copy, computed once per (channels, k) for the process
        words = torch.ops.openmm_geom.lyndon_words(channels, k).to(log_levels[k - 1].device)
        parts.append(log_levels[k - 1].index_select(-1, words))
    return torch.cat(parts, dim=-1)


def _log_map(flat: torch.Tensor, channels: int, depth: int, kernel: bool) -> torch.Tensor:
    if kernel:
        return torch.ops.openmm_geom.signature_log_native(flat, channels, depth)
    return levels_to_logsignature(_split_levels(flat, channels, depth), channels, depth)


def logsignature(path: torch.Tensor, depth: int, max_bytes: int = DEFAULT_MAX_BYTES,
                 native: bool = True) -> torch.Tensor:
    """Log-signature of piecewise-linear paths in Lyndon-word coordinates.

    Parameters
    ----------
    path : torch.Tensor
        ``(batch, length, channels)`` (or one path ``(length, channels)``), length >= 2.
    depth : int
        Truncation level N >= 1.
    max_bytes : int
        Memory refusal threshold, see :func:`signature`.
    native : bool
        Compiled kernels (default) or pure-torch reference, see :func:`signature`. The
        kernel's log map (``signature_log_native``) computes only the Lyndon-word entries.

    Returns
    -------
    torch.Tensor
        ``(batch, logsignature_channels(channels, depth))``; equals pysiglib's
        ``log_sig(path, depth, method=1)``.
    """
    single = path.dim() == 2
    if single:
        path = path.unsqueeze(0)
    result = _log_map(_signature_flat(path, depth, max_bytes, native), path.size(-1), depth,
                      _uses_kernel(path, native))
    if single:
        result = result.squeeze(0)
    return result


# --- augmentations ------------------------------------------------------------------------

def time_augment(path: torch.Tensor, end_time: float = 1.0) -> torch.Tensor:
    """Append time, running linearly from 0 to ``end_time``, as the last channel.

    The signature of the augmented path is no longer blind to the speed along the path.
    """
    length = path.size(-2)
    t = torch.linspace(0.0, end_time, length, dtype=path.dtype, device=path.device)
    shape = list(path.shape[:-1]) + [1]
    return torch.cat([path, t.reshape([1] * (path.dim() - 2) + [length, 1]).expand(shape)], dim=-1)


def lead_lag(path: torch.Tensor) -> torch.Tensor:
    """Lead-lag transform: channels (lag, lead), 2*length-1 points.

    lag = (x0, x0, x1, x1, ..., x_{L-1}), lead = (x0, x1, x1, x2, ..., x_{L-1}); its level-2
    terms hold the quadratic variation of the path.
    """
    repeated = torch.repeat_interleave(path, 2, dim=-2)
    lag = repeated[..., :-1, :]
    lead = repeated[..., 1:, :]
    return torch.cat([lag, lead], dim=-1)


def basepoint(path: torch.Tensor) -> torch.Tensor:
    """Prepend the origin, so the signature also sees the path's starting point."""
    zero = torch.zeros_like(path.narrow(-2, 0, 1))
    return torch.cat([zero, path], dim=-2)


# --- windows ------------------------------------------------------------------------------

def _windows(path: torch.Tensor, window: int, stride: int) -> Tuple[torch.Tensor, int]:
    if path.dim() != 3:
        raise ValueError("path must have shape (batch, length, channels)")
    if window < 2:
        raise ValueError("a window needs at least 2 points, got " + str(window))
    if stride < 1:
        raise ValueError("stride must be >= 1, got " + str(stride))
    if path.size(1) < window:
        raise ValueError("path of " + str(path.size(1)) + " points is shorter than the window of "
                         + str(window))
    unfolded = path.unfold(1, window, stride)              # (B, n_windows, C, window)
    count = unfolded.size(1)
    flat = unfolded.permute(0, 1, 3, 2).reshape(-1, window, path.size(2))
    return flat, count


def windowed_signature(path: torch.Tensor, depth: int, window: int, stride: int,
                       max_bytes: int = DEFAULT_MAX_BYTES, native: bool = True) -> torch.Tensor:
    """Signatures of the windows ``path[:, i*stride : i*stride+window]``: (B, n_windows, D).

    With ``stride = window - 1`` consecutive windows share their boundary point, so no
    increment is lost and Chen's identity recovers the whole path's signature.
    """
    flat, count = _windows(path, window, stride)
    return signature(flat, depth, max_bytes, native).reshape(path.size(0), count, -1)


def windowed_logsignature(path: torch.Tensor, depth: int, window: int, stride: int,
                          max_bytes: int = DEFAULT_MAX_BYTES, native: bool = True) -> torch.Tensor:
    """Log-signatures of windows, as :func:`windowed_signature`: (B, n_windows, D_log)."""
    flat, count = _windows(path, window, stride)
    return logsignature(flat, depth, max_bytes, native).reshape(path.size(0), count, -1)


# --- streaming ----------------------------------------------------------------------------

class SignatureStream(torch.nn.Module):
    """Signature of a growing path, extended point by point with Chen's identity.

    ``update(points)`` appends points ``(batch, n, channels)`` (or ``(n, channels)`` /
    ``(channels,)`` for one stream) and costs time proportional to the new points only;
    ``signature()`` and ``logsignature()`` return the current values, identical to the batch
    functions applied to the whole path seen so far.

    Parameters
    ----------
    channels, depth : int
        Path dimension and truncation level.
    batch : int
        Number of independent streams.
    dtype : torch.dtype
        Precision of the stored signature (float64 keeps long streams accurate).
    native : bool
        Extend with the compiled kernel (default) or the pure-torch recursion.
    """

    def __init__(self, channels: int, depth: int, batch: int = 1,
                 dtype: torch.dtype = torch.float64, native: bool = True):
        super().__init__()
        _check_depth_channels(channels, depth)
        self.native = native
        self.channels = channels
        self.depth = depth
        self.batch = batch
        self.points_seen = 0
        self.register_buffer("last_point", torch.zeros(batch, channels, dtype=dtype))
        self.register_buffer("flat", torch.zeros(batch, signature_channels(channels, depth),
                                                 dtype=dtype))

    @torch.jit.export
    def reset(self) -> None:
        """Forget the path; the next point starts a new one."""
        self.points_seen = 0
        self.flat.zero_()
        self.last_point.zero_()

    @torch.jit.export
    def update(self, points: torch.Tensor) -> None:
        """Append points (batch, n, channels); the first point ever only sets the start."""
        if points.dim() == 1:
            points = points.reshape(1, 1, -1)
        elif points.dim() == 2:
            points = points.unsqueeze(0) if self.batch == 1 else points.unsqueeze(1)
        if points.size(0) != self.batch or points.size(2) != self.channels:
            raise ValueError("stream expects points of shape (" + str(self.batch) + ", n, "
                             + str(self.channels) + "), got " + str(list(points.shape)))
        if not bool(torch.isfinite(points).all()):
            raise ValueError("stream points contain NaN or infinite values")
        points = points.to(self.flat.dtype)
        if self.points_seen == 0:
            self.last_point.copy_(points[:, 0])
            self.points_seen = 1
            points = points[:, 1:]
        if points.size(1) == 0:
            return
        joined = torch.cat([self.last_point.unsqueeze(1), points], dim=1)
        if _uses_kernel(joined, self.native):
            # Chen's identity in the kernel: the stored signature times the new segment's
            self.flat.copy_(torch.ops.openmm_geom.signature_native(joined, self.depth, self.flat))
        else:
            levels = _split_levels(self.flat, self.channels, self.depth)
            block = _block_length(self.batch, self.channels, self.depth, joined.size(1) - 1)
            extended = _extend(levels, joined, self.depth, block)
            self.flat.copy_(torch.cat(extended, dim=-1))
        self.last_point.copy_(points[:, -1])
        self.points_seen += points.size(1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Append ``points`` and return the current log-signature."""
        self.update(points)
        return self.logsignature()

    @torch.jit.export
    def signature(self) -> torch.Tensor:
        """Current signature (batch, signature_channels)."""
        return self.flat.clone()

    @torch.jit.export
    def logsignature(self) -> torch.Tensor:
        """Current log-signature in Lyndon-word coordinates (batch, logsignature_channels)."""
        return _log_map(self.flat, self.channels, self.depth, _uses_kernel(self.flat, self.native))
