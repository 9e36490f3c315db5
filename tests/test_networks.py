"""Tests of `robot_rl.networks` (ensembles, the critic, the actor) and of the batch transfer in
`robot_rl.algos.batch` (uint8 HWC images to float CHW, random shifts).

Ensembles are checked member by member against standalone one-member copies, the split first layer against a layer
on the concatenation, the actor's densities against each other and against a numerical integral.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robot_rl.algos.batch import random_shift, to_torch
from robot_rl.data.replay import Batch, Observation
from robot_rl.networks import (
    ConvConfig,
    EnsembleConvEncoder,
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleMLP,
    MaxPool2x2,
    QEnsemble,
    TanhGaussianActor,
    set_state_statistics,
)

SMALL_CONV = ConvConfig(channels=(4, 4, 4))
IMAGE = (12, 10, 3)
"""A small, non-square image (H, W, C), so that H and W cannot be swapped unnoticed."""


# -- helpers -------------------------------------------------------------------------------------------------------
def member_state_dict(ensemble: nn.Module, member: int, members: int) -> dict[str, Tensor]:
    """Member `member`'s parameters of an N-member ensemble, shaped for a 1-member copy.

    Grouped convolutions stack the members along output channels (member n owns rows [n*C:(n+1)*C] of each weight
    and bias); `EnsembleLinear` weights are (N, in, out) and biases (N, 1, out), so member n owns [n:n+1]. Both are
    "split dim 0 into N equal blocks, take block n".
    """
    out = {}
    for name, value in ensemble.state_dict().items():
        if name.endswith(("state_mean", "state_std")):  # the state standardisation is shared by all members
            out[name] = value.clone()
            continue
        rows = value.shape[0] // members
        assert rows * members == value.shape[0], name
        out[name] = value[member * rows : (member + 1) * rows].clone()
    return out


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def observation(batch: int, state_dim: int = 2) -> tuple[Tensor, Tensor]:
    """Random float images (B, C, H, W) in [0, 1] of size `IMAGE` and states (B, S)."""
    h, w, c = IMAGE
    return torch.rand(batch, c, h, w), torch.randn(batch, state_dim)


# -- ensembles: one forward, independent members -------------------------------------------------------------------
def randomise_layer_norms(module: nn.Module) -> None:
    """Random gains and biases in every `EnsembleLayerNorm` (they start at 1 and 0, the same for every member)."""
    for sub in module.modules():
        if isinstance(sub, EnsembleLayerNorm):
            nn.init.uniform_(sub.weight, 0.5, 1.5)
            nn.init.uniform_(sub.bias, -0.5, 0.5)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_q_ensemble_members_equal_standalone_copies(layer_norm: bool) -> None:
    members, state_dim, action_dim = 3, 2, 2
    big = QEnsemble(members, IMAGE, state_dim, action_dim, hidden=(8, 6), conv=SMALL_CONV, layer_norm=layer_norm)
    randomise_layer_norms(big)
    image, state = observation(5, state_dim)
    action = torch.rand(5, action_dim) * 2 - 1
    q = big(image, state, action)  # (N, B)
    assert q.shape == (members, 5)
    for n in range(members):
        single = QEnsemble(1, IMAGE, state_dim, action_dim, hidden=(8, 6), conv=SMALL_CONV, layer_norm=layer_norm)
        single.load_state_dict(member_state_dict(big, n, members))
        torch.testing.assert_close(single(image, state, action)[0], q[n], rtol=1e-5, atol=1e-5)
    # The members differ (independent initialisation), so the equalities above are not trivial.
    assert not torch.allclose(q[0], q[1])


def test_conv_encoder_members_equal_standalone_copies() -> None:
    members = 3
    big = EnsembleConvEncoder(members, IMAGE, SMALL_CONV)
    image, _ = observation(4)
    features = big(image)  # (N, B, F)
    assert features.shape == (members, 4, big.output_dim)
    for n in range(members):
        single = EnsembleConvEncoder(1, IMAGE, SMALL_CONV)
        single.load_state_dict(member_state_dict(big, n, members))
        torch.testing.assert_close(single(image)[0], features[n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (3, 4, 7, 9), (1, 2, 3, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_without_gradient_equals_max_pool2d(shape: tuple[int, ...], channels_last: bool) -> None:
    # Distinct values, so that the maximum of each window is unique (and its gradient's position well defined).
    x = torch.randperm(math.prod(shape)).float().reshape(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pool = MaxPool2x2()
    with torch.no_grad():
        fast = pool(x)  # the index-free path
    assert torch.equal(fast, F.max_pool2d(x, 2))
    # With gradient it is max_pool2d itself: the same values and gradient.
    leaf = x.clone().requires_grad_(True)
    out = pool(leaf)
    assert torch.equal(out, fast)
    out.sum().backward()
    reference = x.clone().requires_grad_(True)
    F.max_pool2d(reference, 2).sum().backward()
    assert leaf.grad is not None and torch.equal(leaf.grad, reference.grad)


def test_max_pool_refuses_an_input_too_small_to_pool() -> None:
    with torch.no_grad(), pytest.raises(ValueError, match=r"at least 2x2, got \(1, 5\)"):
        MaxPool2x2()(torch.zeros(1, 2, 1, 5))
    # An image too small for the encoder's pooling is refused when the encoder is built.
    with pytest.raises(ValueError, match="at least 2x2"):
        EnsembleConvEncoder(2, (3, 3, 3), SMALL_CONV)


def test_conv_encoder_gives_the_same_features_with_and_without_gradient() -> None:
    encoder = EnsembleConvEncoder(2, IMAGE, SMALL_CONV)  # odd sizes after pooling: 12x10 -> 6x5 -> 3x2
    image, _ = observation(3)
    with torch.no_grad():
        fast = encoder(image)
    torch.testing.assert_close(encoder(image).detach(), fast, rtol=0, atol=0)


def test_ensemble_linear_and_mlp_members_equal_standalone_copies() -> None:
    members = 3
    x = torch.randn(members, 7, 5)  # a different input for every member
    for big, make_single in (
        (EnsembleLinear(members, 5, 4), lambda: EnsembleLinear(1, 5, 4)),
        (EnsembleMLP(members, 5, (6, 3), 2), lambda: EnsembleMLP(1, 5, (6, 3), 2)),
        (EnsembleMLP(members, 5, (6, 3), 2, layer_norm=True), lambda: EnsembleMLP(1, 5, (6, 3), 2, layer_norm=True)),
    ):
        randomise_layer_norms(big)
        y = big(x)
        for n in range(members):
            single = make_single()
            single.load_state_dict(member_state_dict(big, n, members))
            torch.testing.assert_close(single(x[n : n + 1])[0], y[n], rtol=1e-5, atol=1e-5)


def test_layer_normed_critic_equals_its_formula() -> None:
    """Q = W3 relu(LN(W2 relu(LN(W_f f + W_a a + b1)) + b2)) + b3 per member, LN with the member's own gain and bias;
    without layer_norm the same weights give a different function (the normalisation is really applied)."""
    members, state_dim, action_dim = 2, 3, 2
    q = QEnsemble(members, None, state_dim, action_dim, hidden=(8, 6), layer_norm=True)
    randomise_layer_norms(q)
    state, action = torch.randn(5, state_dim) * 3, torch.rand(5, action_dim) * 2 - 1
    linears = [m for m in q.head.net if isinstance(m, EnsembleLinear)]
    norms = [q.norm_in, *(m for m in q.head.net if isinstance(m, EnsembleLayerNorm))]
    assert len(linears) == 2 and len(norms) == 2
    for n in range(members):

        def norm(x: Tensor, i: int, n: int = n) -> Tensor:
            layer = norms[i]
            assert isinstance(layer, EnsembleLayerNorm)
            centred = x - x.mean(-1, keepdim=True)
            scaled = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + layer.eps)
            return scaled * layer.weight[n, 0] + layer.bias[n, 0]

        pre = state @ q.feature_in.weight[n] + action @ q.action_in.weight[n] + q.feature_in.bias[n, 0]  # type: ignore[index]
        h = torch.relu(norm(pre, 0))
        h = torch.relu(norm(h @ linears[0].weight[n] + linears[0].bias[n, 0], 1))  # type: ignore[index]
        expected = (h @ linears[1].weight[n] + linears[1].bias[n, 0]).squeeze(-1)  # type: ignore[index]
        torch.testing.assert_close(q(None, state, action)[n], expected, rtol=1e-5, atol=1e-5)
    # Normalised, the first layer's scale does not matter (LN(c x) = LN(x)); without normalisation it does.
    for layer_norm in (True, False):
        net = QEnsemble(members, None, state_dim, action_dim, hidden=(8, 6), layer_norm=layer_norm)
        before = net(None, state, action)
        with torch.no_grad():
            for p in (net.feature_in.weight, net.feature_in.bias, net.action_in.weight):
                assert p is not None
                p.mul_(7.0)
        assert torch.allclose(net(None, state, action), before, atol=1e-4) == layer_norm


def test_ensemble_linear_is_a_batched_affine_map() -> None:
    layer = EnsembleLinear(2, 3, 4)
    x = torch.randn(2, 5, 3)
    expected = torch.stack([x[n] @ layer.weight[n] + layer.bias[n] for n in range(2)])  # type: ignore[index]
    torch.testing.assert_close(layer(x), expected)
    no_bias = EnsembleLinear(2, 3, 4, bias=False)
    assert no_bias.bias is None
    torch.testing.assert_close(no_bias(x), torch.stack([x[n] @ no_bias.weight[n] for n in range(2)]))


def test_q_of_k_actions_equals_one_forward_per_action() -> None:
    members, action_dim, k = 2, 3, 4
    q = QEnsemble(members, IMAGE, 2, action_dim, hidden=(8, 6), conv=SMALL_CONV)
    image, state = observation(5)
    actions = torch.rand(5, k, action_dim) * 2 - 1  # (B, K, A)
    values = q.q(q.encode(image, state), actions)  # (N, B, K)
    assert values.shape == (members, 5, k)
    for j in range(k):
        torch.testing.assert_close(values[:, :, j], q(image, state, actions[:, j]), rtol=1e-5, atol=1e-5)


def test_q_with_per_member_actions() -> None:
    members, action_dim, k = 3, 2, 2
    q = QEnsemble(members, None, 4, action_dim, hidden=(8,))
    features = q.encode(None, torch.randn(5, 4))
    actions = torch.rand(members, 5, k, action_dim) * 2 - 1  # (N, B, K, A): member n gets actions[n]
    values = q.q(features, actions)
    for n in range(members):
        torch.testing.assert_close(values[n], q.q(features, actions[n])[n])


def test_split_first_layer_equals_a_layer_on_the_concatenation() -> None:
    members, action_dim = 2, 3
    q = QEnsemble(members, IMAGE, 2, action_dim, hidden=(8, 6), conv=SMALL_CONV)
    image, state = observation(5)
    action = torch.rand(5, action_dim) * 2 - 1
    features = q.encode(image, state)  # (N, B, F)
    assert q.feature_in.bias is not None and q.action_in.bias is None  # one bias, as on the concatenation
    weight = torch.cat([q.feature_in.weight, q.action_in.weight], dim=1)  # (N, F + A, H)
    inputs = torch.cat([features, action.unsqueeze(0).expand(members, -1, -1)], dim=-1)  # (N, B, F + A)
    hidden = torch.relu(inputs @ weight + q.feature_in.bias)  # (N, B, H)
    expected = q.head(hidden).squeeze(-1)  # (N, B)
    torch.testing.assert_close(q(image, state, action), expected, rtol=1e-5, atol=1e-5)
    # Initialised like nn.Linear on the concatenation: U(-1/sqrt(F + A), 1/sqrt(F + A)) for both parts.
    bound = 1 / math.sqrt(q.encoder.output_dim + action_dim)
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.95 * bound  # thousands of draws: the bound is reached closely
    assert q.action_in.weight.abs().max() <= bound


# -- sizes ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("state_dim", [0, 5])
def test_parameter_counts_at_cogs_setting(state_dim: int) -> None:
    image, action_dim = (48, 48, 3), 5
    q = QEnsemble(2, image, state_dim, action_dim)
    assert q.encoder.output_dim == 12 * 12 * 16 + state_dim  # 48 -> 24 -> 12 by two poolings
    per_member = count(q) / 2
    assert 2.9e6 <= per_member <= 3.2e6, per_member
    # Exact: 3 convolutions, the first layer on [features; state; action], 1024 -> 512 -> 256 -> 1.
    convs = (3 * 9 * 16 + 16) + 2 * (16 * 9 * 16 + 16)
    first = (2304 + state_dim + action_dim) * 1024 + 1024
    assert per_member == convs + first + 1024 * 512 + 512 + 512 * 256 + 256 + 256 + 1
    actor = TanhGaussianActor(image, state_dim, action_dim)
    assert 3.0e6 <= count(actor) <= 3.3e6, count(actor)


def test_strided_convolutions() -> None:
    pooled = EnsembleConvEncoder(2, IMAGE, ConvConfig())
    strided = EnsembleConvEncoder(2, IMAGE, ConvConfig(strided=True))
    assert not any(isinstance(m, nn.MaxPool2d) for m in strided.modules())
    assert [m.stride for m in strided.modules() if isinstance(m, nn.Conv2d)] == [(2, 2), (2, 2), (1, 1)]
    # 12x10 -> 6x5 -> 3x3 by pooling (floor) and 6x5 -> 3x3 by stride 2 with padding 1 (ceil).
    assert pooled.output_dim == 16 * 3 * 2
    assert strided.output_dim == 16 * 3 * 3
    image, _ = observation(3)
    assert strided(image).shape == (2, 3, strided.output_dim)
    wider = EnsembleConvEncoder(2, IMAGE, ConvConfig(channels=(16, 16, 8), strided=True))
    assert wider.output_dim == 8 * 3 * 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": (16, 16), "pool": (True, True, False)},  # one pool flag too many
        {"channels": (16, 16, 16), "pool": (True,)},
        {"channels": (), "pool": ()},
        {"kernel": 0},
        {"kernel": 2},  # even: padding kernel // 2 would not keep the size
    ],
)
def test_bad_conv_config_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="ConvConfig"):
        ConvConfig(**kwargs)  # type: ignore[arg-type]


def test_image_encoder_refuses_a_missing_image() -> None:
    q = QEnsemble(2, IMAGE, 2, 1, hidden=(4,), conv=SMALL_CONV)
    with pytest.raises(ValueError, match="image"):
        q(None, torch.zeros(1, 2), torch.zeros(1, 1))


# -- the actor -----------------------------------------------------------------------------------------------------
def narrow_actor(state_dim: int, action_dim: int, log_std: float) -> TanhGaussianActor:
    """A state-only actor whose log std is about `log_std` everywhere and whose mean stays well inside (-1.5, 1.5),
    so that samples do not saturate at +-1 in float32."""
    actor = TanhGaussianActor(None, state_dim, action_dim, hidden=(16,))
    last = actor.head.net[-1]
    assert isinstance(last, EnsembleLinear) and last.bias is not None
    with torch.no_grad():
        last.weight[..., action_dim:] *= 0.1
        last.bias[..., action_dim:] = log_std
    return actor


def test_actor_samples_and_their_log_probabilities() -> None:
    actor = narrow_actor(state_dim=3, action_dim=2, log_std=-1.0)
    features = actor.encode(None, torch.randn(6, 3))
    action, log_prob = actor.sample(features, k=5)
    assert action.shape == (6, 5, 2) and log_prob.shape == (6, 5)
    assert action.abs().max() < 1
    # The density of `log_prob` at the sampled actions is the one `sample` reports.
    again = torch.stack([actor.log_prob(features, action[:, j]) for j in range(5)], dim=1)  # (B, K)
    torch.testing.assert_close(again, log_prob, rtol=0, atol=1e-3)
    # Reparameterised: the actions carry gradient to the actor.
    action.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())


def test_actor_density_integrates_to_one() -> None:
    """exp(log pi(a|s)) over a in (-1, 1) is a probability density (1-D action, a known answer)."""
    actor = narrow_actor(state_dim=2, action_dim=1, log_std=-0.5)
    features = actor.encode(None, torch.randn(3, 2))
    grid = torch.linspace(-1 + 1e-5, 1 - 1e-5, 20001, dtype=torch.float64)
    density = torch.stack([actor.log_prob(features, a.expand(3, 1).float()).double().exp() for a in grid[::50]])
    # Coarse grid for speed; the density is smooth at this std, so the trapezoid rule is accurate enough.
    mass = torch.trapezoid(density, grid[::50], dim=0)  # (B,)
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-2)


def test_deterministic_action_is_tanh_of_the_mean() -> None:
    actor = narrow_actor(state_dim=2, action_dim=2, log_std=-1.0)
    features = actor.encode(None, torch.randn(4, 2))
    head_out = actor.head(features.unsqueeze(0))[0]  # (B, 2A): mean first, then log std
    expected = torch.tanh(head_out[:, :2])
    torch.testing.assert_close(actor.deterministic(features), expected)
    # tanh is monotone, so tanh(mu) is the median of the sampled actions.
    samples, _ = actor.sample(features, k=4001)
    torch.testing.assert_close(samples.median(dim=1).values, expected, rtol=0, atol=0.03)


# -- random shifts -------------------------------------------------------------------------------------------------
def shift_offsets(images: Tensor, shifted: Tensor, pad: int) -> Tensor:
    """For each image, every offset (dy, dx) in [-pad, pad]^2 whose crop of the edge-padded image equals the output:
    a (B, 2P+1, 2P+1) boolean table."""
    _, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    side = 2 * pad + 1
    table = torch.zeros(images.shape[0], side, side, dtype=torch.bool)
    for dy in range(side):
        for dx in range(side):
            crop = padded[:, :, dy : dy + h, dx : dx + w]
            table[:, dy, dx] = (crop == shifted).flatten(1).all(dim=1)
    return table


def test_random_shift_is_a_translated_crop_of_the_padded_image() -> None:
    pad, images = 2, torch.rand(1000, 2, 8, 7)  # distinct random content: one offset matches each image
    generator = torch.Generator().manual_seed(3)
    shifted = random_shift(images, pad, generator)
    assert shifted.shape == images.shape
    table = shift_offsets(images, shifted, pad)
    assert (table.flatten(1).sum(dim=1) == 1).all()  # every output is exactly one translate
    # Images get their own offsets: all 25 of [-2, 2]^2 occur among 1000 images, rows and columns independently.
    used = table.any(dim=0)
    assert used.all(), used
    # Reproducible with a seeded generator.
    torch.testing.assert_close(random_shift(images, pad, torch.Generator().manual_seed(3)), shifted)


def test_random_shift_without_padding_is_the_identity() -> None:
    images = torch.rand(4, 3, 6, 5)
    assert torch.equal(random_shift(images, 0), images)


# -- the batch transfer --------------------------------------------------------------------------------------------
def replay_batch(size: int = 4, privileged: bool = True, image: bool = True) -> Batch:
    rng = np.random.default_rng(0)
    h, w, _ = IMAGE

    def obs() -> Observation:
        pixels = rng.integers(0, 256, (size, h, w, 3), dtype=np.uint8)
        pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255  # the extremes map to exactly 0 and 1
        return Observation(
            image=pixels if image else None,
            state=rng.standard_normal((size, 2)).astype(np.float32),
            privileged=rng.standard_normal((size, 3)).astype(np.float32) if privileged else None,
        )

    return Batch(
        obs=obs(),
        action=rng.uniform(-1, 1, (size, 5)).astype(np.float32),
        reward=rng.standard_normal(size).astype(np.float32),
        next_obs=obs(),
        terminated=np.array([True, False, False, True])[:size],
        truncated=np.array([False, True, False, True])[:size],
    )


def test_to_torch_converts_images_and_keeps_flags_apart() -> None:
    batch = replay_batch()
    out = to_torch(batch, torch.device("cpu"))
    for raw, converted in ((batch.obs, out.obs), (batch.next_obs, out.next_obs)):
        assert converted.image is not None and raw.image is not None
        assert converted.image.dtype == torch.float32 and converted.image.shape == (4, 3, 12, 10)
        expected = raw.image.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(converted.image.numpy(), expected)
        assert (converted.image[0, :, 0, 0] == 0).all() and (converted.image[0, :, 0, 1] == 1).all()
        np.testing.assert_array_equal(converted.state.numpy(), raw.state)  # proprioception only by default
    assert out.terminated.dtype == torch.float32 and out.truncated.dtype == torch.float32
    assert out.terminated.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert out.truncated.tolist() == [0.0, 1.0, 0.0, 1.0]
    np.testing.assert_array_equal(out.action.numpy(), batch.action)
    np.testing.assert_array_equal(out.reward.numpy(), batch.reward)


def test_to_torch_privileged_state() -> None:
    batch = replay_batch()
    out = to_torch(batch, torch.device("cpu"), use_privileged=True)
    for raw, converted in ((batch.obs, out.obs), (batch.next_obs, out.next_obs)):
        assert raw.privileged is not None
        np.testing.assert_array_equal(converted.state.numpy(), np.concatenate([raw.state, raw.privileged], axis=1))
    with pytest.raises(ValueError, match="privileged"):
        to_torch(replay_batch(privileged=False), torch.device("cpu"), use_privileged=True)


def test_to_torch_shifts_images_and_passes_state_only_batches() -> None:
    batch = replay_batch()
    plain = to_torch(batch, torch.device("cpu"))
    shifted = to_torch(batch, torch.device("cpu"), augment_pad=2, generator=torch.Generator().manual_seed(0))
    for before, after in ((plain.obs, shifted.obs), (plain.next_obs, shifted.next_obs)):
        assert before.image is not None and after.image is not None
        assert (shift_offsets(before.image, after.image, 2).flatten(1).sum(dim=1) == 1).all()
    state_only = to_torch(replay_batch(image=False), torch.device("cpu"), augment_pad=2)
    assert state_only.obs.image is None and state_only.next_obs.image is None


def test_state_standardisation_is_applied_and_checked() -> None:
    state_dim, action_dim = 3, 2
    q = QEnsemble(2, None, state_dim, action_dim, hidden=(8,))
    state, action = torch.randn(6, state_dim) * 5 + 2, torch.rand(6, action_dim) * 2 - 1
    mean, std = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([5.0, 0.1, 1.0])
    raw = q(None, (state - mean) / std, action)  # identity statistics: the standardised input by hand
    set_state_statistics([q], mean, std)
    torch.testing.assert_close(q(None, state, action), raw)
    assert not torch.allclose(q(None, (state - mean) / std, action), raw)
    with pytest.raises(ValueError, match="positive standard deviation"):
        set_state_statistics([q], mean, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        set_state_statistics([q], mean[:2], std[:2])
