"""Behaviour of ratkit.models: shapes, the features/head split, internal
normalisation, functional_call, the registry and RAT's noise targets."""

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from ratkit.models import (
    MODELS,
    PreActResNet18,
    ResNet18,
    RobustModel,
    SmallCNN,
    WideResNet,
    build_from_spec,
    build_model,
    model_spec,
    noise_target_names,
)
from ratkit.models.wideresnet import BasicBlock

# (id, factory, input shape). Small variants keep the file fast on CPU.
CASES = [
    ("smallcnn-default", lambda: SmallCNN(), (2, 1, 28, 28)),
    ("smallcnn-tiny", lambda: SmallCNN(channels=(8, 16), hidden=32), (2, 1, 28, 28)),
    ("smallcnn-rgb-32-padded", lambda: SmallCNN(in_channels=3, channels=(8, 16), hidden=32,
                                                input_size=(32, 32), padding=1), (2, 3, 32, 32)),
    ("wrn-10-1", lambda: WideResNet(depth=10, widen_factor=1), (2, 3, 32, 32)),
    ("wrn-16-1", lambda: build_model("wrn-16-1"), (2, 3, 32, 32)),
    ("preactresnet18", lambda: PreActResNet18(), (2, 3, 32, 32)),
    ("resnet18", lambda: ResNet18(), (2, 3, 32, 32)),
]


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def model_and_input(request):
    torch.manual_seed(0)
    _, factory, shape = request.param
    model = factory().eval()
    model.factory = factory  # plain attribute, for building a second instance
    x = torch.rand(shape)
    return model, x


def test_output_shape_is_batch_by_num_classes(model_and_input):
    model, x = model_and_input
    with torch.no_grad():
        out = model(x)
    assert out.shape == (x.shape[0], model.num_classes) == (2, 10)
    assert torch.isfinite(out).all()


def test_forward_equals_head_of_features_bitwise(model_and_input):
    model, x = model_and_input
    with torch.no_grad():
        assert torch.equal(model(x), model.head(model.features(x)))


def test_features_have_feature_dim_and_head_is_linear(model_and_input):
    model, x = model_and_input
    assert isinstance(model, RobustModel)
    assert isinstance(model.head, nn.Linear)
    with torch.no_grad():
        f = model.features(x)
    assert f.shape == (x.shape[0], model.feature_dim)
    assert model.feature_dim == model.head.in_features


def test_model_normalises_inputs_itself(model_and_input):
    model, x = model_and_input
    assert model.mean.shape[:1] == (1,) and model.mean.shape[2:] == (1, 1)
    with torch.no_grad():
        before = model(x)
        assert torch.equal(model.normalize(x), (x - model.mean) / model.std)
        model.mean.add_(0.25)
        after = model(x)
    assert not torch.equal(before, after)


def test_functional_call_uses_given_params_and_leaves_live_ones_alone(model_and_input):
    model, x = model_and_input
    live = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    params["head.weight"] = params["head.weight"] + 1.0
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    params[first_conv] = params[first_conv] * 1.5
    with torch.no_grad():
        base = model(x)
        same = functional_call(model, dict(model.named_parameters()), (x,))
        changed = functional_call(model, params, (x,))
    assert torch.equal(base, same)
    assert not torch.allclose(base, changed)
    for n, p in model.named_parameters():
        assert torch.equal(p, live[n]), n
    with torch.no_grad():
        assert torch.equal(model(x), base)


def test_gradients_reach_the_input_in_pixel_space(model_and_input):
    model, x = model_and_input
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_state_dict_round_trip_gives_identical_outputs(model_and_input):
    model, x = model_and_input
    torch.manual_seed(123)
    other = model.factory().eval()
    with torch.no_grad():
        assert not torch.equal(other(x), model(x))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(other(x), model(x))


def test_smallcnn_is_deterministic_in_train_mode():
    torch.manual_seed(0)
    model = SmallCNN(channels=(8, 16), hidden=32).train()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), model(x))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in model.modules())


def test_smallcnn_head_is_not_zero_initialised():
    model = SmallCNN(channels=(8, 16), hidden=32)
    assert model.head.weight.abs().sum() > 0


def test_smallcnn_flatten_size_follows_input_size_and_padding():
    m = SmallCNN(channels=(8, 16), hidden=32, input_size=(36, 20), padding=1)
    with torch.no_grad():
        assert m(torch.rand(1, 1, 36, 20)).shape == (1, 10)
    with pytest.raises(ValueError):
        SmallCNN(input_size=(8, 8))


@pytest.mark.parametrize("name, expected", [
    ("smallcnn", 312_202),  # the TRADES MNIST SmallCNN
    ("wrn-34-10", 46_160_474),
    ("wrn-28-10", 36_479_194),
    ("resnet18", 11_173_962),
    ("preactresnet18", 11_172_170),  # with the final BN of Rice et al.
])
def test_reference_parameter_counts(name, expected):
    with torch.device("meta"):  # no memory, no init cost
        model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_build_model_by_every_registry_name():
    small = {"smallcnn": {"channels": (8, 16), "hidden": 32}, "wideresnet": {"depth": 10, "widen_factor": 1}}
    for name, cls in MODELS.items():
        with torch.device("meta"):
            model = build_model(name, **small.get(name, {}))
        assert type(model) is cls
        assert model.num_classes == 10
    with torch.device("meta"):
        assert build_model("ResNet18", num_classes=7).num_classes == 7


@pytest.mark.parametrize("name, depth, width", [("wrn-16-4", 16, 4), ("wrn-28-10", 28, 10), ("wrn-34-10", 34, 10)])
def test_wrn_names_set_depth_and_width(name, depth, width):
    with torch.device("meta"):
        model = build_model(name)
    assert isinstance(model, WideResNet)
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 3 * (depth - 4) // 6
    assert model.feature_dim == 64 * width


def test_wrn_name_conflicting_with_kwargs_raises():
    with pytest.raises(ValueError):
        build_model("wrn-16-4", depth=28)


def test_unknown_model_name_raises_listing_known_names():
    with pytest.raises(ValueError, match="smallcnn") as err:
        build_model("vgg16")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        build_model("wrn-16")


@pytest.mark.parametrize("depth", [0, 4, 15, 33, 35])
def test_wideresnet_bad_depth_raises(depth):
    with pytest.raises(ValueError):
        WideResNet(depth=depth, widen_factor=1)


def test_mismatched_normalisation_channels_raise():
    with pytest.raises(ValueError):
        ResNet18(in_channels=1)
    with pytest.raises(ValueError):
        SmallCNN(mean=(0.5, 0.5), std=(0.5,))
    with pytest.raises(ValueError):
        SmallCNN(std=(0.0,))


@pytest.mark.parametrize("name, kwargs", [
    ("smallcnn", {"channels": (8, 16), "hidden": 32, "input_size": (32, 32), "in_channels": 3,
                  "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6), "padding": 1}),
    ("wrn-16-4", {"num_classes": 100}),
    ("wideresnet", {"depth": 10, "widen_factor": 2}),
    ("preactresnet18", {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}),
    ("resnet18", {}),
])
def test_build_from_spec_rebuilds_matching_model(name, kwargs):
    spec = model_spec(name, **kwargs)
    spec = json.loads(json.dumps(spec))  # what a checkpoint's metadata gives back
    assert spec["name"] == name
    with torch.device("meta"):
        original = build_model(name, **kwargs)
        rebuilt = build_from_spec(spec)
    assert type(rebuilt) is type(original)
    a, b = original.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)


def test_model_spec_is_plain_json_data():
    spec = model_spec("smallcnn", channels=(8, 16), mean=(0.5,))
    assert spec == {"name": "smallcnn", "kwargs": {"channels": [8, 16], "mean": [0.5]}}
    with pytest.raises(ValueError):
        model_spec("nope")


def _by_type(model, kind):
    wanted = {id(m.weight) for m in model.modules() if isinstance(m, kind)}
    return [n for n, p in model.named_parameters() if id(p) in wanted]


@pytest.mark.parametrize("factory", [
    lambda: SmallCNN(channels=(8, 16), hidden=32),
    lambda: WideResNet(depth=10, widen_factor=1),
    lambda: PreActResNet18(),
    lambda: ResNet18(),
], ids=["smallcnn", "wrn-10-1", "preactresnet18", "resnet18"])
def test_noise_target_names_are_exactly_the_conv_weights(factory):
    with torch.device("meta"):
        model = factory()
    convs = noise_target_names(model)
    assert convs == noise_target_names(model, "conv")
    assert convs == _by_type(model, nn.Conv2d) and len(convs) > 0
    assert not any(n.startswith("head.") for n in convs)
    params = dict(model.named_parameters())
    assert all(params[n].dim() == 4 for n in convs)

    linears = noise_target_names(model, "linear")
    assert linears == _by_type(model, nn.Linear) and "head.weight" in linears

    assert noise_target_names(model, "all") == [n for n, p in model.named_parameters() if p.dim() > 1]
    with pytest.raises(ValueError):
        noise_target_names(model, "bn")


def test_noise_target_names_ignore_parameter_names():
    """A conv registered under an unusual name is still found; a 'conv'-named Linear is not."""
    model = nn.Module()
    model.weird = nn.Conv2d(1, 2, 3)
    model.conv = nn.Linear(2, 2)
    assert noise_target_names(model, "conv") == ["weird.weight"]
    assert noise_target_names(model, "linear") == ["conv.weight"]


def test_the_cifar_models_default_statistics_are_the_registry_entry():
    from ratkit.data import DATASETS
    from ratkit.models import CIFAR10_MEAN, CIFAR10_STD

    assert (CIFAR10_MEAN, CIFAR10_STD) == (DATASETS["cifar10"].mean, DATASETS["cifar10"].std)
