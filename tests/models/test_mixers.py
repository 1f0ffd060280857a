"""Token mixers (openmm_geom.models.mixers): invariance, equivariance, scripting, bad inputs."""
import json

import pytest
import torch

from openmm_geom.models.mixers import (GVP, MIXER_NAMES, MLP, GatedEquivariantBlock, GVPMixer,
                                       SubFormer, SubMixer, TokenPooling, build_mixer)

D = 8          # features per token (divisible by the default 4 heads)
M = 5          # tokens
B = 3          # frames
G = 6          # global features
ORDER_FREE = ("pool", "subformer", "gvp", "gvp+subformer")
ORDER_DEPENDENT = ("submixer", "gvp+submixer")


def random_rotation(dtype=torch.float64) -> torch.Tensor:
    """A random proper rotation (det +1): the vectors may be axial, so no reflections."""
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def rotate_tokens(tokens: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Scalars unchanged, each of the d vectors (a (3, d) block per token) rotated."""
    rotated = tokens.clone()
    rotated[:, :, 1:4] = torch.einsum("ij,bmjd->bmid", rotation, tokens[:, :, 1:4])
    return rotated


def make_inputs(global_dim: int, dtype=torch.float64, batch: int = B, tokens: int = M):
    x = torch.randn(batch, tokens, 4, D, dtype=dtype)
    g = torch.randn(batch, global_dim, dtype=dtype) if global_dim else None
    return x, g


def make_mixer(name: str, global_dim: int = 0, dtype=torch.float64, **options):
    return build_mixer(name, D, M, global_dim=global_dim, **options).to(dtype).eval()


ALL_VARIANTS = [(name, g) for name in MIXER_NAMES for g in (0, G)]


@pytest.mark.parametrize("name,global_dim", ALL_VARIANTS)
def test_scripted_mixer_matches_eager_and_has_declared_width(name, global_dim):
    torch.manual_seed(0)
    mixer = make_mixer(name, global_dim)
    scripted = torch.jit.script(mixer)
    tokens, g = make_inputs(global_dim)
    out = mixer(tokens, g)
    assert out.shape == (B, mixer.out_dim)
    assert scripted.out_dim == mixer.out_dim
    torch.testing.assert_close(scripted(tokens, g), out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,global_dim", ALL_VARIANTS)
def test_mixer_output_is_rotation_invariant_float64(name, global_dim):
    torch.manual_seed(1)
    mixer = make_mixer(name, global_dim)
    tokens, g = make_inputs(global_dim)
    rotated = rotate_tokens(tokens, random_rotation())
    # The check is only meaningful if the rotation moved the vectors and the output reads them.
    assert (rotated - tokens).abs().max() > 0.1
    rescaled = tokens.clone()
    rescaled[:, :, 1:4] *= 2.0
    with torch.no_grad():
        out = mixer(tokens, g)
        assert (mixer(rescaled, g) - out).abs().max() > 1e-4, "output ignores the vectors"
        torch.testing.assert_close(mixer(rotated, g), out, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_mixer_depends_on_rotating_the_scalars_into_vectors(name):
    # Control for the invariance test: mixing a vector component into the scalar channel is
    # not a symmetry, and the test setup must be able to see that.
    torch.manual_seed(2)
    mixer = make_mixer(name)
    tokens, _ = make_inputs(0)
    swapped = tokens.clone()
    swapped[:, :, 0], swapped[:, :, 1] = tokens[:, :, 1], tokens[:, :, 0]
    with torch.no_grad():
        assert (mixer(swapped, None) - mixer(tokens, None)).abs().max() > 1e-4


@pytest.mark.parametrize("name", ORDER_FREE)
def test_order_free_mixers_are_permutation_invariant(name):
    torch.manual_seed(3)
    mixer = make_mixer(name, G)
    tokens, g = make_inputs(G)
    perm = torch.randperm(M)
    while bool((perm == torch.arange(M)).all()):
        perm = torch.randperm(M)
    with torch.no_grad():
        torch.testing.assert_close(mixer(tokens[:, perm], g), mixer(tokens, g), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ORDER_DEPENDENT)
def test_mlp_mixer_variants_depend_on_token_order(name):
    torch.manual_seed(4)
    mixer = make_mixer(name)
    tokens, _ = make_inputs(0)
    reversed_tokens = tokens.flip(1)
    with torch.no_grad():
        assert (mixer(reversed_tokens, None) - mixer(tokens, None)).abs().max() > 1e-6


def _check_equivariant_block(block, x, v, rotation):
    x_out, v_out = block(x, v)
    x_rot, v_rot = block(x, torch.einsum("ij,...jd->...id", rotation, v))
    torch.testing.assert_close(x_rot, x_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(v_rot, torch.einsum("ij,...jd->...id", rotation, v_out),
                               rtol=0, atol=1e-12)
    return x_out, v_out


def test_gated_equivariant_block_scalars_invariant_vectors_equivariant():
    torch.manual_seed(5)
    block = GatedEquivariantBlock(D, 5, hidden=7).double()
    x, v = torch.randn(B, M, D, dtype=torch.float64), torch.randn(B, M, 3, D, dtype=torch.float64)
    x_out, v_out = _check_equivariant_block(block, x, v, random_rotation())
    assert x_out.shape == (B, M, 5) and v_out.shape == (B, M, 3, 5)
    assert v_out.abs().max() > 1e-3


def test_gated_equivariant_block_follows_algorithm_1():
    torch.manual_seed(6)
    block = GatedEquivariantBlock(4, 3, hidden=5).double()
    x, v = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    w1, w2 = block.norm_proj.weight, block.vector_proj.weight
    lin1, lin2 = block.update[0], block.update[2]
    norms = torch.linalg.vector_norm(v @ w1.T, dim=-2)
    h = lin2(torch.nn.functional.silu(lin1(torch.cat((x, norms), -1))))
    expected_x = torch.nn.functional.silu(h[:, :3])
    expected_v = h[:, None, 3:] * (v @ w2.T)
    x_out, v_out = block(x, v)
    torch.testing.assert_close(x_out, expected_x)
    torch.testing.assert_close(v_out, expected_v)


def test_gated_equivariant_block_scalar_only_mode_matches_and_has_no_vector_weights():
    block = GatedEquivariantBlock(D, D, vector_output=False).double()
    x_out, v_out = block(torch.randn(2, D, dtype=torch.float64),
                         torch.randn(2, 3, D, dtype=torch.float64))
    assert x_out.shape == (2, D) and v_out.shape == (2, 3, 0)
    assert block.vector_proj is None
    torch.jit.script(block)


def test_gvp_scalars_invariant_vectors_equivariant_and_gated_by_sigmoid_of_norm():
    torch.manual_seed(7)
    gvp = GVP(in_scalar=4, in_vector=D, out_scalar=6, out_vector=5, hidden_vector=7).double()
    x, v = torch.randn(B, M, 4, dtype=torch.float64), torch.randn(B, M, 3, D, dtype=torch.float64)
    x_out, v_out = _check_equivariant_block(gvp, x, v, random_rotation())
    assert x_out.shape == (B, M, 6) and v_out.shape == (B, M, 3, 5)
    # Algorithm 2 line 7-8: v' = sigmoid(|v_o|) v_o, with v_o = W_o W_h v.
    v_o = v @ gvp.w_h.weight.T @ gvp.w_o.weight.T
    n = torch.linalg.vector_norm(v_o, dim=-2, keepdim=True)
    torch.testing.assert_close(v_out, torch.sigmoid(n) * v_o)
    expected_x = torch.nn.functional.silu(
        gvp.w_m(torch.cat((torch.linalg.vector_norm(v @ gvp.w_h.weight.T, dim=-2), x), -1)))
    torch.testing.assert_close(x_out, expected_x)
    torch.jit.script(gvp)


@pytest.mark.parametrize("name,global_dim", ALL_VARIANTS)
def test_gradients_reach_every_parameter_tokens_and_global_features(name, global_dim):
    torch.manual_seed(8)
    mixer = make_mixer(name, global_dim)
    tokens, g = make_inputs(global_dim)
    tokens.requires_grad_(True)
    if g is not None:
        g.requires_grad_(True)
    mixer(tokens, g).pow(2).sum().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, pname
    assert torch.isfinite(tokens.grad).all() and tokens.grad[:, :, 1:4].abs().max() > 0
    if g is not None:
        assert g.grad.abs().max() > 0


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_zero_vector_features_give_finite_gradients(name):
    # |v| has no derivative at 0; tokens whose atom vectors cancel must not produce NaN.
    torch.manual_seed(9)
    mixer = make_mixer(name)
    tokens, _ = make_inputs(0)
    tokens[:, :, 1:4] = 0.0
    tokens.requires_grad_(True)
    mixer(tokens, None).sum().backward()
    assert torch.isfinite(tokens.grad).all()


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_wrong_feature_width_is_a_clear_error_eager_and_scripted(name):
    mixer = make_mixer(name)
    scripted = torch.jit.script(mixer)
    bad = torch.randn(B, M, 4, D + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(B, M, 4, d=8\)"):
        mixer(bad, None)
    with pytest.raises(Exception, match=r"\(B, M, 4, d=8\)"):
        scripted(bad, None)
    with pytest.raises(ValueError, match="channel 0 scalars"):
        mixer(torch.randn(B, M, 3, D, dtype=torch.float64), None)


@pytest.mark.parametrize("name", ORDER_DEPENDENT)
def test_wrong_token_count_for_mlp_mixer_is_a_clear_error(name):
    mixer = make_mixer(name)
    scripted = torch.jit.script(mixer)
    tokens, _ = make_inputs(0, tokens=M + 2)
    with pytest.raises(ValueError, match=f"built for {M} tokens"):
        mixer(tokens, None)
    with pytest.raises(Exception, match=f"built for {M} tokens"):
        scripted(tokens, None)


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_global_features_missing_unexpected_or_misshaped_are_errors(name):
    tokens, g = make_inputs(G)
    with_global = make_mixer(name, G)
    with pytest.raises(ValueError, match="needs global_features"):
        with_global(tokens, None)
    with pytest.raises(ValueError, match=r"global_features must have shape \(B=3, 6\)"):
        with_global(tokens, g[:, :-1])
    with pytest.raises(ValueError, match="global_dim=0"):
        make_mixer(name)(tokens, g)


def test_order_free_mixers_accept_any_token_count():
    torch.manual_seed(10)
    for name in ORDER_FREE:
        mixer = make_mixer(name)
        tokens, _ = make_inputs(0, tokens=2)
        assert mixer(tokens, None).shape == (B, mixer.out_dim)


def test_build_mixer_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="valid names: pool, subformer, submixer, gvp"):
        build_mixer("transformer", D, M)
    with pytest.raises(TypeError, match="bad options for mixer 'subformer'"):
        build_mixer("subformer", D, M, num_hedas=2)
    with pytest.raises(ValueError, match="needs num_tokens"):
        build_mixer("submixer", D, None)
    with pytest.raises(ValueError, match="needs num_tokens"):
        build_mixer("gvp+submixer", D, None)
    with pytest.raises(TypeError, match="fixes post"):
        build_mixer("gvp", D, M, post="subformer")
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        build_mixer("subformer", D, M, num_heads=3)
    with pytest.raises(ValueError, match="reduce must be"):
        build_mixer("pool", D, M, reduce="max")


@pytest.mark.parametrize("name,global_dim", ALL_VARIANTS)
def test_hyperparameters_are_json_and_rebuild_the_same_mixer(name, global_dim):
    torch.manual_seed(11)
    options = {} if name == "pool" else {"num_layers": 2}
    mixer = make_mixer(name, global_dim, **options)
    hyperparameters = json.loads(json.dumps(mixer.hyperparameters))
    rebuilt = build_mixer(**hyperparameters).double().eval()
    assert rebuilt.hyperparameters == mixer.hyperparameters
    rebuilt.load_state_dict(mixer.state_dict())  # strict: same names and shapes
    tokens, g = make_inputs(global_dim)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(tokens, g), mixer(tokens, g), rtol=0, atol=0)


@pytest.mark.parametrize("global_dim", (0, G))
def test_subformer_attention_maps_are_row_stochastic_and_scriptable(global_dim):
    torch.manual_seed(12)
    mixer = make_mixer("subformer", global_dim, num_layers=3, num_heads=2)
    tokens, g = make_inputs(global_dim)
    maps = mixer.attention_maps(tokens, g)
    assert maps.shape == (3, B, 2, M + 1, M + 1)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, B, 2, M + 1, dtype=torch.float64))
    assert (maps >= 0).all()
    # Not uniform: the weights depend on the tokens.
    assert (maps - 1.0 / (M + 1)).abs().max() > 1e-4
    torch.testing.assert_close(torch.jit.script(mixer).attention_maps(tokens, g), maps)
    # Invariant too, as they are computed from invariant token scalars.
    torch.testing.assert_close(mixer.attention_maps(rotate_tokens(tokens, random_rotation()), g),
                               maps, rtol=0, atol=1e-10)


def test_gvp_subformer_attention_maps_and_error_without_transformer():
    torch.manual_seed(13)
    tokens, _ = make_inputs(0)
    maps = make_mixer("gvp+subformer").attention_maps(tokens, None)
    assert maps.shape == (2, B, 4, M + 1, M + 1)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, B, 4, M + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="post='subformer'"):
        make_mixer("gvp+submixer").attention_maps(tokens, None)


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_float32_mixer_agrees_with_float64(name):
    torch.manual_seed(14)
    mixer64 = make_mixer(name, G)
    mixer32 = build_mixer(**mixer64.hyperparameters).float().eval()
    mixer32.load_state_dict({k: v.float() for k, v in mixer64.state_dict().items()})
    tokens, g = make_inputs(G)
    out32 = torch.jit.script(mixer32)(tokens.float(), g.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), mixer64(tokens, g), rtol=1e-4, atol=1e-5)


def test_token_pooling_mean_is_sum_of_scaled_tokens():
    torch.manual_seed(15)
    summed = TokenPooling(D, reduce="sum").double()
    averaged = TokenPooling(D, reduce="mean").double()
    averaged.load_state_dict(summed.state_dict())
    tokens, _ = make_inputs(0)
    torch.testing.assert_close(averaged(tokens, None), summed(tokens / M, None))


def test_dropout_is_active_only_in_training_mode():
    torch.manual_seed(16)
    mixer = SubFormer(D, dropout=0.5).double()
    tokens, _ = make_inputs(0)
    mixer.train()
    assert (mixer(tokens, None) - mixer(tokens, None)).abs().max() > 0
    mixer.eval()
    torch.testing.assert_close(mixer(tokens, None), mixer(tokens, None), rtol=0, atol=0)


def test_direct_constructors_match_build_mixer_widths():
    assert SubMixer(D, M).out_dim == D
    assert GVPMixer(D, num_layers=2, post="submixer", num_tokens=M).out_dim == D
    assert TokenPooling(D, global_dim=G).out_dim == 2 * D
    with pytest.raises(ValueError, match="needs num_tokens"):
        GVPMixer(D, post="submixer")
    with pytest.raises(ValueError, match="post must be"):
        GVPMixer(D, post="transformer")


def test_mlp_head_layers_activation_and_scripting():
    torch.manual_seed(17)
    head = MLP(D, 16, 2, layers=3, activation="tanh").double()
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(D, 16), (16, 16), (16, 2)]
    x = torch.randn(4, D, dtype=torch.float64)
    torch.testing.assert_close(torch.jit.script(head)(x), head(x))
    single = MLP(D, 16, 2, layers=1)
    assert len([m for m in single.modules() if isinstance(m, torch.nn.Linear)]) == 1
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(D, 16, 2, activation="swish")
    with pytest.raises(ValueError, match="layers >= 1"):
        MLP(D, 16, 2, layers=0)
