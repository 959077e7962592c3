"""Specifications of ``ratkit.models.wrap``: a plain torch classifier used by every method and the evaluation."""

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ratkit.evaluate import evaluate
from ratkit.methods import AT, AWP, MART, RAT, TRADES, train_attack, trades_attack
from ratkit.models import RobustModel, WrappedModel, noise_target_names, wrap

EPS = 0.1
SRC = str(Path(__file__).resolve().parents[1] / "src")


class PlainCNN(nn.Module):
    """A user's network with its head as ``fc`` (and BatchNorm, so train and eval mode differ)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def penultimate(self, x):
        return F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 4).flatten(1)

    def forward(self, x):
        return self.fc(self.penultimate(x))


class SequentialNet(nn.Module):
    """A user's network with its head inside an nn.Sequential, ``classifier.2``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10))

    def penultimate(self, x):
        return self.classifier[:2](self.features(x))

    def forward(self, x):
        return self.classifier(self.features(x))


class LogSoftmaxNet(PlainCNN):
    """Applies something after its head: not a model ``wrap`` can take."""

    def forward(self, x):
        return F.log_softmax(self.fc(self.penultimate(x)), dim=1)


LAYOUTS = {"fc": (PlainCNN, "fc", lambda net: net.fc),
           "classifier.2": (SequentialNet, "classifier.2", lambda net: net.classifier[2])}


def _net(layout, seed=0):
    torch.manual_seed(seed)
    cls, path, _ = LAYOUTS[layout]
    return cls(), path


def _batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_features_and_logits_are_the_users_module_from_one_call(layout, train):
    net, path = _net(layout)
    model = wrap(net, head=path).train(train)
    x, _ = _batch()
    calls = []
    net.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        feats, logits = model(x, with_features=True)
        assert len(calls) == 1
        plain_logits, features = model(x), model.features(x)
        assert len(calls) == 3
        assert net.training == train
        expected_logits, expected_feats = net(x), net.penultimate(x)
    assert torch.equal(logits, expected_logits) and torch.equal(plain_logits, expected_logits)
    assert torch.equal(feats, expected_feats) and torch.equal(features, expected_feats)
    assert torch.allclose(model.head(feats), logits, atol=1e-6)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_head_is_the_users_linear_and_its_parameters_appear_once(layout):
    net, path = _net(layout)
    model = wrap(net, head=path)
    assert isinstance(model, RobustModel) and isinstance(model, WrappedModel)
    assert model.head is LAYOUTS[layout][2](net)
    assert (model.feature_dim, model.num_classes) == (model.head.in_features, 10)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["net." + n for n, _ in net.named_parameters()]
    assert set(model.state_dict()) == {"net." + k for k in net.state_dict()} | {"mean", "std"}
    twin = copy.deepcopy(model)
    assert twin.head is LAYOUTS[layout][2](twin.net) and twin.head is not model.head


def test_mean_and_std_normalise_pixels_before_the_users_module():
    net, _ = _net("fc")
    net.eval()
    x, _ = _batch()
    mean, std = (0.5,), (0.25,)
    with torch.no_grad():
        assert torch.equal(wrap(net)(x), net(x))  # default: the module gets the pixels
        assert torch.allclose(wrap(net, mean=mean, std=std)(x), net((x - 0.5) / 0.25), atol=1e-6)
    with pytest.raises(ValueError, match="both mean and std"):
        wrap(net, mean=mean)


def test_functional_call_runs_the_users_module_with_the_given_weights_only():
    net, _ = _net("fc")
    model = wrap(net).eval()
    x, _ = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = torch.randn_like(net.conv.weight)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin.conv.weight.copy_(weight)
        feats, logits = functional_call(model, {"net.conv.weight": weight}, (x,), {"with_features": True},
                                        strict=False)
        assert torch.equal(logits, twin(x)) and torch.equal(feats, twin.penultimate(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_noise_targets_are_found_by_layer_type_under_the_wrapper(layout):
    net, path = _net(layout)
    model = wrap(net, head=path)
    convs = ["net." + n + ".weight" for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    linears = ["net." + n + ".weight" for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    assert noise_target_names(model, "conv") == convs
    assert noise_target_names(model, "linear") == linears and "net." + path + ".weight" in linears


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_rat_noisy_attack_leaves_the_live_parameters_untouched(layout):
    net, path = _net(layout)
    model = wrap(net, head=path)
    x, y = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    noisy = RAT(TRADES(attack=trades_attack(EPS, steps=3)), sigma=1e-1).craft(
        model, x, y, generator=torch.Generator().manual_seed(0))
    plain = TRADES(attack=trades_attack(EPS, steps=3)).craft(model, x, y, generator=torch.Generator().manual_seed(0))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not torch.equal(noisy, plain)  # mode restored; the noise reached the attack


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_rat_trades_steps_from_python_lower_the_loss_on_a_fixed_batch(layout):
    net, path = _net(layout)
    model = wrap(net, head=path)
    x, y = _batch(n=32)
    method = RAT(TRADES(attack=trades_attack(EPS, steps=2)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = [method.step(model, opt, x, y, generator=g).loss.item() for _ in range(20)]
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.parametrize("name", ["at", "mart", "awp-rat-at"])
def test_every_method_takes_a_step_on_a_wrapped_model(name):
    net, path = _net("classifier.2")
    model = wrap(net, head=path)
    x, y = _batch(n=8)
    method = {"at": lambda: AT(attack=train_attack(EPS, steps=1)),
              "mart": lambda: MART(attack=train_attack(EPS, steps=1, random_start="normal")),
              "awp-rat-at": lambda: AWP(RAT(AT(attack=train_attack(EPS, steps=1))), gamma=1e-2)}[name]()
    before = copy.deepcopy(net.state_dict())
    out = method.step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y,
                      generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    assert not torch.equal(net.classifier[2].weight, before["classifier.2.weight"])  # the user's head trained


def test_the_evaluation_protocol_runs_on_a_wrapped_model_and_leaves_it_as_it_was():
    net, _ = _net("fc")
    model = wrap(net).train()
    x, y = _batch(n=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = evaluate(model, x, y, dataset="synthetic", eps=EPS, attacks=("clean", "fgsm", "pgd20", "cw30"),
                      quiet=True)
    assert set(report.attacks) == {"clean", "fgsm", "pgd20", "cw30"} and report.robust_n == 8
    assert report.robust_accuracy <= report.attacks["clean"].accuracy
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_head_path_that_does_not_exist_is_refused_naming_the_linear_layers():
    with pytest.raises(ValueError, match=r"no submodule 'fcc'.*'fc'") as err:
        wrap(PlainCNN(), head="fcc")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"no submodule 'classifier.5'.*'classifier.0', 'classifier.2'"):
        wrap(SequentialNet(), head="classifier.5")


@pytest.mark.parametrize("net, path, kind", [(SequentialNet(), "classifier", "Sequential"),
                                             (PlainCNN(), "conv", "Conv2d")])
def test_a_head_that_is_not_a_linear_layer_is_refused(net, path, kind):
    with pytest.raises(ValueError, match=f"head '{path}' is a {kind}, not an nn.Linear") as err:
        wrap(net, head=path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("net, path", [(LogSoftmaxNet(), "fc"), (SequentialNet(), "classifier.0")])
def test_logits_changed_after_the_head_are_refused_at_the_first_forward(net, path):
    model = wrap(net, head=path)  # only a forward can tell
    with pytest.raises(ValueError, match="is not the output of its head") as err:
        model(_batch(n=2)[0])
    assert "\n" not in str(err.value)


DDP_STEP = textwrap.dedent("""
    import copy, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from ratkit import distributed
    from ratkit.methods import RAT, TRADES, trades_attack
    from ratkit.models import wrap

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    initial = copy.deepcopy(net.state_dict())
    alone, shared = wrap(copy.deepcopy(net), head="3"), wrap(net, head="3")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    method = RAT(TRADES(attack=trades_attack(0.1, steps=2)))
    for model, train_model in ((alone, alone), (shared, DistributedDataParallel(shared))):
        method.step(train_model, torch.optim.SGD(model.parameters(), lr=0.1), x, y,
                    generator=torch.Generator().manual_seed(2))
    for (name, a), b in zip(alone.state_dict().items(), shared.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name
    assert not torch.equal(net[3].weight, initial["3.weight"])  # the step did move the weights
    print("same step")
    distributed.exit_cleanly(0)
""")


def test_a_rat_step_through_distributed_data_parallel_equals_the_plain_step(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", DDP_STEP, str(tmp_path / "store")], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0 and "same step" in result.stdout, result.stderr[-3000:]
