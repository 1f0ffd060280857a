"""Signature / log-signature op against pysiglib 4.0 (the oracle), gradients, streaming, symmetries."""
import itertools
import math
import os
import sys

import pysiglib
import pysiglib.torch_api as siglib_torch
import pytest
import torch

from openmm_geom.ops import signature as sig

torch.set_num_threads(1)


def _random_walk(batch, length, channels, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    steps = torch.randn(batch, length, channels, generator=generator, dtype=dtype)
    return torch.cumsum(steps, dim=1) / math.sqrt(length)


def _relative_error(ours, reference):
    reference = torch.as_tensor(reference)
    return float((ours - reference).abs().max() / reference.abs().max())


CASES = [(1, 1, 5), (2, 4, 7), (3, 4, 20), (5, 3, 40), (8, 4, 30), (16, 2, 50), (30, 2, 25),
         (30, 3, 6), (30, 4, 4), (4, 4, 200)]


@pytest.mark.parametrize("channels,depth,length", CASES)
def test_signature_matches_pysiglib(channels, depth, length):
    path = _random_walk(3, length, channels, seed=channels * 100 + depth)
    reference = pysiglib.sig(path, depth)
    ours = sig.signature(path, depth)
    assert ours.shape == reference.shape == (3, sig.signature_channels(channels, depth))
    assert _relative_error(ours, reference) < 1e-6


@pytest.mark.parametrize("channels,depth,length", CASES)
def test_logsignature_matches_pysiglib_lyndon_words(channels, depth, length):
    path = _random_walk(3, length, channels, seed=channels * 10 + depth)
    pysiglib.prepare_log_sig(channels, depth, method=1)
    reference = pysiglib.log_sig(path, depth, method=1)
    ours = sig.logsignature(path, depth)
    assert ours.shape == reference.shape == (3, sig.logsignature_channels(channels, depth))
    assert _relative_error(ours, reference) < 1e-6


def test_lyndon_words_and_witt_formula():
    for channels, depth in [(2, 4), (3, 3), (5, 2), (4, 4)]:
        expected = [w for w in pysiglib.lyndon_words(channels, depth)]
        ours = []
        for k in range(1, depth + 1):
            for index in sig.lyndon_word_indices(channels, k).tolist():
                ours.append(tuple(int(index // channels ** (k - 1 - p)) % channels for p in range(k)))
        assert ours == expected
        assert sig.logsignature_channels(channels, depth) == len(expected) \
            == pysiglib.log_sig_length(channels, depth)


def test_float32_agrees_with_float64():
    path = _random_walk(4, 300, 6, seed=3)
    exact = sig.signature(path, 4)
    single = sig.signature(path.float(), 4)
    assert single.dtype == torch.float32
    assert _relative_error(single.double(), exact) < 1e-4


def test_long_paths_cross_block_boundaries(monkeypatch):
    """The pure-torch path processes time in blocks; tiny blocks must give the kernel's
    numbers."""
    path = _random_walk(2, 257, 3, seed=4)
    whole = sig.signature(path, 4)
    monkeypatch.setattr(sig, "_block_elements", lambda: 37)
    assert sig._block_length(2, 3, 4, 256) < 10
    assert torch.allclose(sig.signature(path, 4, native=False), whole, rtol=1e-12, atol=1e-12)


def test_checkpointed_backward_equals_recorded_backward(monkeypatch):
    """Pure torch: long differentiable paths recompute blocks in backward: same gradients,
    less memory."""
    path = _random_walk(3, 300, 3, seed=5)
    weights = torch.randn(sig.signature_channels(3, 4), dtype=torch.float64,
                          generator=torch.Generator().manual_seed(6))

    def gradient():
        leaf = path.clone().requires_grad_()
        (sig.logsignature(leaf, 4, native=False)
         @ weights[:sig.logsignature_channels(3, 4)]).sum().backward()
        return leaf.grad

    recorded = gradient()
    monkeypatch.setattr(sig, "_block_elements", lambda: 400)      # many blocks
    monkeypatch.setattr(sig, "_checkpoint_bytes", lambda: 1000)   # force checkpointing
    calls = []
    original = sig._extend_checkpointed
    monkeypatch.setattr(sig, "_extend_checkpointed", lambda *a: calls.append(1) or original(*a))
    checkpointed = gradient()
    assert calls, "the checkpointed path was not taken"
    assert _relative_error(checkpointed, recorded) < 1e-12
    # the estimate follows the strategy: boundaries + one block instead of every step
    assert sig.signature_memory_bytes(3, 300, 3, 4, 8, requires_grad=True) < \
        sig._recorded_bytes(3, 300, 3, 4, 8) / 3


def test_long_differentiable_paths_fit_the_default_budget():
    # 256 paths x 10,000 points x 8 channels at depth 4 would record ~12 GB of per-step levels
    assert sig._recorded_bytes(256, 10000, 8, 4, 8) > sig.DEFAULT_MAX_BYTES
    assert sig.signature_memory_bytes(256, 10000, 8, 4, 8, requires_grad=True) \
        < sig.DEFAULT_MAX_BYTES / 4
    # the kernel stores nothing per step: output, path gradient, two signature buffers
    native = sig.signature_memory_bytes(256, 10000, 8, 4, 8, requires_grad=True, native=True)
    assert native == (4 * 256 * 4680 + 2 * 256 * 10000 * 8) * 8 < 2 ** 30


@pytest.mark.parametrize("function", [sig.signature, sig.logsignature])
def test_gradcheck(function):
    path = _random_walk(2, 6, 3, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: function(p, 3), (path,))


def test_gradient_matches_pysiglib_backprop():
    path = _random_walk(3, 50, 4, seed=6)
    weights = torch.randn(3, sig.signature_channels(4, 3), dtype=torch.float64)
    ours = path.clone().requires_grad_()
    (sig.signature(ours, 3) * weights).sum().backward()
    theirs = path.clone().requires_grad_()
    (siglib_torch.sig(theirs, 3) * weights).sum().backward()
    assert _relative_error(ours.grad, theirs.grad) < 1e-6


def test_time_and_lead_lag_augmentations_match_pysiglib():
    path = _random_walk(2, 9, 3, seed=7)
    for time_aug, lead_lag in [(True, False), (False, True), (True, True)]:
        augmented = sig.lead_lag(path) if lead_lag else path
        if time_aug:
            augmented = sig.time_augment(augmented)
        reference = pysiglib.sig(path, 3, time_aug=time_aug, lead_lag=lead_lag)
        assert _relative_error(sig.signature(augmented, 3), reference) < 1e-10


def test_basepoint_reveals_the_starting_point():
    path = _random_walk(1, 10, 2, seed=8)
    shifted = path + 3.0
    assert torch.allclose(sig.signature(path, 2), sig.signature(shifted, 2))
    assert not torch.allclose(sig.signature(sig.basepoint(path), 2),
                              sig.signature(sig.basepoint(shifted), 2))


def test_streaming_equals_batch_point_by_point_and_in_chunks():
    path = _random_walk(3, 41, 4, seed=9)
    stream = sig.SignatureStream(4, 4, batch=3)
    for i in range(path.shape[1]):
        stream.update(path[:, i])
    assert _relative_error(stream.signature(), sig.signature(path, 4)) < 1e-12
    chunked = torch.jit.script(sig.SignatureStream(4, 4, batch=3))
    for start in range(0, 41, 7):
        chunked.update(path[:, start:start + 7])
    assert _relative_error(chunked.logsignature(), sig.logsignature(path, 4)) < 1e-12
    chunked.reset()
    chunked.update(path[:, 20:])
    assert _relative_error(chunked.signature(), sig.signature(path[:, 20:], 4)) < 1e-12


def test_stream_before_two_points_is_zero_and_rejects_bad_points():
    stream = sig.SignatureStream(2, 3)
    stream.update(torch.tensor([1.0, 2.0]))
    assert torch.count_nonzero(stream.signature()) == 0
    with pytest.raises(ValueError, match="NaN"):
        stream.update(torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="shape"):
        stream.update(torch.zeros(1, 1, 3))


def test_translation_invariance():
    path = _random_walk(2, 30, 3, seed=10)
    offset = torch.tensor([1.5, -20.0, 7.0], dtype=torch.float64)
    assert torch.allclose(sig.logsignature(path + offset, 4), sig.logsignature(path, 4),
                          rtol=1e-10, atol=1e-12)


def test_time_reparametrisation_invariance():
    """Extra points on the straight segments and repeated points (pauses) change nothing."""
    path = _random_walk(2, 12, 3, seed=11)
    pieces = [path[:, :1]]
    generator = torch.Generator().manual_seed(0)
    for j in range(1, path.shape[1]):
        a, b = path[:, j - 1:j], path[:, j:j + 1]
        fractions = torch.sort(torch.rand(int(torch.randint(0, 4, (1,), generator=generator)),
                                          generator=generator, dtype=torch.float64)).values
        for f in fractions:
            pieces.append(a + f * (b - a))
        pieces.append(b)
        if j % 3 == 0:
            pieces.append(b)                      # the path pauses
    slower = torch.cat(pieces, dim=1)
    assert slower.shape[1] > path.shape[1]
    assert _relative_error(sig.signature(slower, 4), sig.signature(path, 4)) < 1e-12


def test_channel_permutation_permutes_the_terms():
    """The paper's permutation equivariance: relabelling channels relabels the words."""
    channels, depth = 4, 3
    path = _random_walk(2, 15, channels, seed=12)
    permutation = [2, 0, 3, 1]
    permuted = sig.signature(path[..., permutation], depth)
    original = sig.signature(path, depth)
    offset = 0
    for k in range(1, depth + 1):
        for word in itertools.product(range(channels), repeat=k):
            index = sum(w * channels ** (k - 1 - p) for p, w in enumerate(word))
            mapped = sum(permutation[w] * channels ** (k - 1 - p) for p, w in enumerate(word))
            assert torch.isclose(permuted[:, offset + index], original[:, offset + mapped]).all()
        offset += channels ** k


def test_chen_identity_for_windows():
    """Windows sharing boundary points: the signature of the whole is their tensor product."""
    path = _random_walk(2, 21, 3, seed=13)
    windows = sig.windowed_signature(path, 3, window=6, stride=5)
    assert windows.shape == (2, 4, sig.signature_channels(3, 3))
    for w in range(4):
        assert torch.allclose(windows[:, w], sig.signature(path[:, 5 * w:5 * w + 6], 3))
    levels = sig._split_levels(windows[:, 0], 3, 3)
    for w in range(1, 4):
        right = sig._split_levels(windows[:, w], 3, 3)
        product = sig._tensor_product(levels, right, 3)
        levels = [levels[k] + right[k] + product[k] for k in range(3)]
    assert _relative_error(torch.cat(levels, -1), sig.signature(path, 3)) < 1e-12
    logs = sig.windowed_logsignature(path, 2, window=6, stride=5)
    assert torch.allclose(logs[:, 2], sig.logsignature(path[:, 10:16], 2))


def test_scripted_functions_equal_eager():
    path = _random_walk(2, 20, 3, seed=14)
    for function in (sig.signature, sig.logsignature):
        scripted = torch.jit.script(function)
        assert torch.equal(scripted(path, 3), function(path, 3))


def test_bad_inputs_give_clear_errors():
    good = _random_walk(1, 5, 2, seed=15)
    for native in (True, False):
        with pytest.raises(ValueError, match="NaN"):
            sig.signature(torch.tensor([[[0.0, 1.0], [float("nan"), 1.0]]]), 2, native=native)
        with pytest.raises(ValueError, match="infinite"):
            sig.logsignature(torch.tensor([[[0.0, 1.0], [float("inf"), 1.0]]]), 2,
                             native=native)
        bad = _random_walk(3, 40, 2, seed=16)
        bad[2, 17, 1] = float("nan")  # one value in the last path of a batch
        with pytest.raises(ValueError, match="NaN"):
            sig.signature(bad, 3, native=native)
    with pytest.raises(ValueError, match="at least 2 points"):
        sig.signature(good[:, :1], 2)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        sig.signature(good, 0)
    with pytest.raises(ValueError, match="shape"):
        sig.signature(torch.zeros(2, 3, 4, 5), 2)
    with pytest.raises(ValueError, match="shorter than the window"):
        sig.windowed_signature(good, 2, window=10, stride=1)
    with pytest.raises(ValueError, match="at least 2 points"):
        sig.windowed_logsignature(good, 2, window=1, stride=1)


def test_memory_refusal_states_the_size_needed():
    path = torch.zeros(32, 3, 100)
    needed = sig.signature_memory_bytes(32, 3, 100, 4)
    assert needed > 32 * 100 ** 4 * 4         # the depth-4 level alone: 1e8 numbers per path
    with pytest.raises(ValueError, match=r"would need [0-9.]+ GiB \(limit 8.0 GiB\)"):
        sig.signature(path, 4)
    with pytest.raises(ValueError, match="would need"):
        sig.logsignature(torch.zeros(1, 10, 4), 3, max_bytes=300)
    # A request that fits runs.
    assert sig.signature(torch.zeros(1, 3, 100), 2).shape == (1, 100 + 100 ** 2)


# --- the native kernel against the pure-torch reference ------------------------------------

KERNEL_CASES = [(c, n) for c in (1, 2, 3, 4, 5, 8, 16) for n in (1, 2, 3, 4)
                if sig.signature_channels(c, n) <= 70000]


@pytest.mark.parametrize("channels,depth", KERNEL_CASES)
def test_kernel_equals_reference_values_and_gradients(channels, depth):
    """Every channel count with its own compiled loops (2, 4, 8, 16) and the generic ones;
    lengths across the kernel's 32-step blocks of the top level."""
    length = 8 if channels == 16 and depth == 4 else 75
    path = _random_walk(3, length, channels, seed=100 + 10 * channels + depth)
    weights = torch.randn(3, sig.signature_channels(channels, depth), dtype=torch.float64,
                          generator=torch.Generator().manual_seed(channels + depth))
    results = []
    for native in (True, False):
        leaf = path.clone().requires_grad_()
        value = sig.signature(leaf, depth, native=native)
        (value * weights).sum().backward()
        results.append((value.detach(), leaf.grad))
    (value_k, grad_k), (value_r, grad_r) = results
    assert _relative_error(value_k, value_r) < 1e-10
    assert _relative_error(grad_k, grad_r) < 1e-10


def test_kernel_float32_close_to_float64():
    path = _random_walk(4, 500, 8, seed=21)
    exact = sig.signature(path, 4)
    single = sig.signature(path.float(), 4)
    assert single.dtype == torch.float32 and _relative_error(single.double(), exact) < 1e-4
    leaf = path.float().requires_grad_()
    sig.signature(leaf, 3).sum().backward()
    reference = path.clone().requires_grad_()
    sig.signature(reference, 3).sum().backward()
    assert _relative_error(leaf.grad.double(), reference.grad) < 1e-4


def test_kernel_gradcheck_with_and_without_initial_signature():
    path = _random_walk(2, 7, 3, seed=22).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: sig.signature(p, 3), (path,))
    initial = sig.signature(_random_walk(2, 5, 3, seed=23), 3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p, i: torch.ops.openmm_geom.signature_native(p, 3, i), (path, initial))


def test_kernel_long_path_gradient_equals_reference():
    """The backward pass rebuilds the signature from the end with inverse exponentials: after
    10,000 steps the gradient still matches the reference."""
    path = _random_walk(2, 10000, 4, seed=24)
    results = []
    for native in (True, False):
        leaf = path.clone().requires_grad_()
        value = sig.logsignature(leaf, 4, native=native)
        value.sum().backward()
        results.append((value.detach(), leaf.grad))
    assert _relative_error(results[0][0], results[1][0]) < 1e-10
    assert _relative_error(results[0][1], results[1][1]) < 1e-8


@pytest.mark.parametrize("channels,depth", [(8, 3), (8, 2), (16, 2), (3, 2)])
def test_kernel_streaming_equals_batch_and_reference_stream(channels, depth):
    """Chunks extend a stored signature (the kernel's ``initial``); depth 2 has its own
    one-pass loop."""
    path = _random_walk(3, 101, channels, seed=25)
    native = sig.SignatureStream(channels, depth, batch=3)
    reference = sig.SignatureStream(channels, depth, batch=3, native=False)
    for chunk in torch.split(path, 17, dim=1):
        native.update(chunk)
        reference.update(chunk)
    assert _relative_error(native.signature(), sig.signature(path, depth)) < 1e-12
    assert _relative_error(native.signature(), reference.signature()) < 1e-12
    assert _relative_error(native.logsignature(), reference.logsignature()) < 1e-12


@pytest.mark.parametrize("channels", [2, 3, 8, 16])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_finds_a_non_finite_value_anywhere(channels, dtype):
    """The kernel checks values during its sweep (depth 2: in the same pass as the sums)."""
    for depth in (2, 3):
        for step in (0, 20, 39):
            for value in (float("nan"), float("inf"), -float("inf")):
                bad = _random_walk(3, 40, channels, seed=17).to(dtype)
                bad[1, step, channels - 1] = value
                with pytest.raises(ValueError, match="NaN or infinite"):
                    sig.signature(bad, depth)


def test_kernel_threads_split_the_batch_not_the_result():
    path = _random_walk(9, 1000, 4, seed=26)  # large enough per path to be split (grain)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = sig.signature(path, 4)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(two, sig.signature(path, 4))


def _busy_threads() -> dict:
    ticks = {}
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/stat") as handle:
            ticks[task] = int(handle.read().rsplit(")", 1)[1].split()[11])  # utime
    return ticks


RUNTIMES = """
import torch
from openmm_geom.ops import load_ops_library
library = str(load_ops_library())
mapped = [line.split()[-1] for line in open("/proc/self/maps") if "/" in line]
print(library in mapped)
print(sorted({name for name in mapped if "libgomp" in name}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kernel_runs_on_torchs_openmp_threads():
    """at::parallel_for only parallelises code compiled with OpenMP; the library must use
    torch's own runtime (in a process that loads only torch and our ops, one libgomp: torch's;
    mdtraj and scikit-learn bring copies of their own), so torch.set_num_threads governs it."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", RUNTIMES], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded, runtimes = done.stdout.splitlines()[-2:]
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    assert loaded == "True"
    assert runtimes == repr([os.path.join(torch_lib, "libgomp.so.1")])
    path = _random_walk(64, 2000, 8, seed=29)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        start = _busy_threads()
        for _ in range(8):
            sig.signature(path, 4)
        end = _busy_threads()
    finally:
        torch.set_num_threads(before)
    worked = sorted(end[t] - start.get(t, 0) for t in end)
    assert worked[-2] >= 5, worked  # a second thread did a share of the sweeps


def test_kernel_refuses_double_backward_clearly():
    path = _random_walk(2, 10, 3, seed=27).requires_grad_()
    (first,) = torch.autograd.grad(sig.signature(path, 3, native=False).sum(), path,
                                   create_graph=True)
    assert first.requires_grad  # the reference supports it
    with pytest.raises(RuntimeError, match="double backward.*native=False"):
        torch.autograd.grad(sig.signature(path, 3).sum(), path, create_graph=True)


def test_scripted_functions_use_the_kernel_and_the_reference():
    path = _random_walk(2, 20, 3, seed=28)
    scripted = torch.jit.script(sig.signature)
    assert torch.equal(scripted(path, 3, sig.DEFAULT_MAX_BYTES, True), sig.signature(path, 3))
    assert torch.equal(scripted(path, 3, sig.DEFAULT_MAX_BYTES, False),
                       sig.signature(path, 3, native=False))


def test_native_lyndon_words_equal_the_python_ones_and_are_computed_once():
    for channels, length in ((1, 1), (2, 5), (3, 4), (8, 3), (16, 2)):
        native = torch.ops.openmm_geom.lyndon_words(channels, length)
        assert torch.equal(native, sig.lyndon_word_indices(channels, length))
        assert torch.ops.openmm_geom.lyndon_words(channels, length).data_ptr() == native.data_ptr()


# --- the native log map against the torch one ---------------------------------------------

LOG_CASES = [(c, n) for c in (1, 2, 3, 5, 8, 16) for n in (1, 2, 3, 4, 5)
             if sig.signature_channels(c, n) <= 70000]


@pytest.mark.parametrize("channels,depth", LOG_CASES)
def test_native_log_map_equals_the_torch_log_map(channels, depth):
    """``signature_log_native`` forms only the Lyndon entries by Horner's scheme; the torch
    reference forms every entry of log(S) by truncated powers. Values and gradients agree."""
    flat = sig.signature(_random_walk(4, 12, channels, seed=200 + channels + depth), depth)
    weights = torch.randn(4, sig.logsignature_channels(channels, depth), dtype=torch.float64,
                          generator=torch.Generator().manual_seed(7 * channels + depth))
    results = []
    for native in (True, False):
        leaf = flat.clone().requires_grad_()
        if native:
            value = torch.ops.openmm_geom.signature_log_native(leaf, channels, depth)
        else:
            levels = list(torch.split(leaf, [channels ** k for k in range(1, depth + 1)], -1))
            value = sig.levels_to_logsignature(levels, channels, depth)
        (value * weights).sum().backward()
        results.append((value.detach(), leaf.grad))
    (value_k, grad_k), (value_r, grad_r) = results
    assert value_k.shape == value_r.shape
    assert _relative_error(value_k, value_r) < 1e-12
    assert _relative_error(grad_k, grad_r) < 1e-12


def test_native_log_map_gradcheck_float32_and_errors():
    flat = sig.signature(_random_walk(2, 6, 3, seed=31), 4).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s: torch.ops.openmm_geom.signature_log_native(s, 3, 4), (flat,))
    single = torch.ops.openmm_geom.signature_log_native(flat.detach().float(), 3, 4)
    assert single.dtype == torch.float32
    assert _relative_error(single.double(), sig.logsignature(_random_walk(2, 6, 3, seed=31), 4)) < 1e-5
    with pytest.raises(RuntimeError, match=r"must be \(batch, 39\)"):
        torch.ops.openmm_geom.signature_log_native(flat.detach()[:, :-1], 3, 3)
    path = _random_walk(2, 10, 3, seed=32).requires_grad_()
    with pytest.raises(RuntimeError, match="double backward.*native=False"):
        torch.autograd.grad(torch.ops.openmm_geom.signature_log_native(
            sig.signature(path, 3, native=False), 3, 3).sum(), path, create_graph=True)
    (first,) = torch.autograd.grad(sig.logsignature(path, 3, native=False).sum(), path,
                                   create_graph=True)
    assert first.requires_grad
