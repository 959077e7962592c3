"""Specifications of `rat import` / `rat export`: foreign state dicts give the same logits in ratkit.

The foreign networks below are written out here with the authors' module names and maths
(TRADES models/wideresnet.py and small_cnn.py, robust-overfitting preactresnet.py), so each
test saves the state dict such a script would save and compares logits after the import.
"""

import json
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ratkit.checkpoints import InteropError, export_checkpoint, import_state_dict, load_model, save_model
from ratkit.cli import build_parser
from ratkit.models import build_model, model_spec

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"


# --------------------------------------------------------------------------- the authors' networks


class TradesBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        if not self.equal:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equal else x)))
        return torch.add(x if self.equal else self.convShortcut(x), self.conv2(out))


class TradesStage(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[TradesBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class TradesWideResNet(nn.Module):
    """TRADES/MART (with the unused ``sub_block1``) and AWP/RAT (without) WideResNet."""

    def __init__(self, depth, widen_factor, num_classes=10, sub_block1=True):
        super().__init__()
        n, ch = (depth - 4) // 6, [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = TradesStage(n, ch[0], ch[1], 1)
        if sub_block1:
            self.sub_block1 = TradesStage(n, ch[0], ch[1], 1)
        self.block2 = TradesStage(n, ch[1], ch[2], 2)
        self.block3 = TradesStage(n, ch[2], ch[3], 2)
        self.bn1, self.relu = nn.BatchNorm2d(ch[3]), nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(self.relu(self.bn1(out)), 8)
        return self.fc(out.view(-1, self.nChannels))


class PreActBlock(nn.Module):
    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class RobustOverfittingPreActResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        cin, stages = 64, []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(PreActBlock(cin, planes, stride), PreActBlock(planes, planes, 1)))
            cin = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        return self.linear(out.view(out.size(0), -1))


class TradesSmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 32, 3)), ("relu1", nn.ReLU()), ("conv2", nn.Conv2d(32, 32, 3)),
            ("relu2", nn.ReLU()), ("maxpool1", nn.MaxPool2d(2, 2)), ("conv3", nn.Conv2d(32, 64, 3)),
            ("relu3", nn.ReLU()), ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64 * 4 * 4, 200)), ("relu1", nn.ReLU()), ("drop", nn.Dropout(0.5)),
            ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()), ("fc3", nn.Linear(200, 10)),
        ]))

    def forward(self, x):
        return self.classifier(self.feature_extractor(x).view(-1, 64 * 4 * 4))


def randomised(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so a wrong mapping cannot hide; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, nn.Linear):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return net.eval()


def images(n=3, c=3, size=32, seed=1):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same_logits(foreign, checkpoint, x, normalise=lambda x: x):
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(model(x), foreign(normalise(x)), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- imports


@pytest.mark.parametrize("depth, widen, sub_block1, wrap", [
    (10, 1, True, lambda sd: sd),  # TRADES / MART: unused sub_block1, plain state dict
    (16, 2, False, lambda sd: OrderedDict((f"module.{k}", v) for k, v in sd.items())),  # AWP / RAT
], ids=["trades-wrn-10-1", "awp-dataparallel-wrn-16-2"])
def test_trades_layout_wide_resnet_gives_the_same_logits(tmp_path, depth, widen, sub_block1, wrap):
    foreign = randomised(TradesWideResNet(depth, widen, sub_block1=sub_block1))
    torch.save(wrap(foreign.state_dict()), tmp_path / "model.pt")
    out = import_state_dict(tmp_path / "model.pt", f"wrn-{depth}-{widen}", "cifar10", tmp_path / "imported")
    assert_same_logits(foreign, out, images())
    _, meta = load_model(out)
    assert meta["dataset"] == "cifar10" and meta["model"]["name"] == f"wrn-{depth}-{widen}"
    assert meta["imported_from"]["file"] == "model.pt" and meta["imported_from"]["layout"] == "trades-wrn"
    assert meta["imported_from"]["dropped_unused"] == (len(foreign.sub_block1.state_dict()) if sub_block1 else 0)


def test_preact_resnet18_nested_under_state_dict_with_dataparallel_prefix(tmp_path):
    foreign = randomised(RobustOverfittingPreActResNet18())
    # what AWP's AT script and robust-overfitting save as their best checkpoint
    torch.save({"state_dict": {f"module.{k}": v for k, v in foreign.state_dict().items()},
                "test_robust_acc": 0.5, "epoch": 99}, tmp_path / "model_best.pth")
    out = import_state_dict(tmp_path / "model_best.pth", "preactresnet18", "cifar10", tmp_path / "preact")
    assert_same_logits(foreign, out, images(n=2))
    source = load_model(out)[1]["imported_from"]
    assert (source["layout"], source["container"], source["prefix"]) == ("preact-resnet18", "state_dict", "module.")


def test_trades_smallcnn_under_a_model_key_with_the_model_name_inferred(tmp_path):
    foreign = randomised(TradesSmallCNN())
    torch.save({"model": foreign.state_dict()}, tmp_path / "smallcnn.pt")
    out = import_state_dict(tmp_path / "smallcnn.pt", None, "mnist", tmp_path / "smallcnn")
    assert_same_logits(foreign, out, images(c=1, size=28))
    assert load_model(out)[1]["model"]["name"] == "smallcnn"


def test_a_ratkit_state_dict_keeps_its_own_normalisation(tmp_path):
    torch.manual_seed(0)
    ours = randomised(build_model("wrn-10-1", mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)))
    torch.save(ours.state_dict(), tmp_path / "ours.pt")
    out = import_state_dict(tmp_path / "ours.pt", "wrn-10-1", "cifar10", tmp_path / "ours")
    assert_same_logits(ours, out, images())
    assert load_model(out)[0].std.flatten().tolist() == pytest.approx([0.2, 0.3, 0.25])


def test_no_normalisation_by_default_and_the_given_one_otherwise(tmp_path):
    foreign = randomised(TradesWideResNet(10, 1))
    torch.save(foreign.state_dict(), tmp_path / "model.pt")
    plain = import_state_dict(tmp_path / "model.pt", "wrn-10-1", "cifar10", tmp_path / "plain")
    model = load_model(plain)[0]
    assert model.mean.flatten().tolist() == [0.0] * 3 and model.std.flatten().tolist() == [1.0] * 3
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)  # AWP's AT script normalises outside
    out = import_state_dict(tmp_path / "model.pt", "wrn-10-1", "cifar10", tmp_path / "norm", mean=mean, std=std)
    normalise = lambda x: (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)  # noqa: E731
    assert_same_logits(foreign, out, images(), normalise)


def test_files_without_num_batches_tracked_still_import(tmp_path):
    foreign = randomised(TradesWideResNet(10, 1, sub_block1=False))
    state = {k: v for k, v in foreign.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    out = import_state_dict(tmp_path / "old.pt", "wrn-10-1", "cifar10", tmp_path / "old")
    assert_same_logits(foreign, out, images())


# --------------------------------------------------------------------------- refusals


def _trades_file(tmp_path, edit=lambda sd: sd):
    state = dict(randomised(TradesWideResNet(10, 1, sub_block1=False)).state_dict())
    torch.save(edit(state), tmp_path / "model.pt")
    return tmp_path / "model.pt"


def _one_line_error(path, model="wrn-10-1", dataset="cifar10", out=None) -> str:
    with pytest.raises(InteropError) as info:
        import_state_dict(path, model, dataset, out or path.with_name("out"))
    message = str(info.value)
    assert "\n" not in message
    assert not path.with_name("out.safetensors").exists()
    return message


def test_an_extra_tensor_is_named(tmp_path):
    path = _trades_file(tmp_path, lambda sd: {**sd, "block2.layer.0.extra.weight": torch.zeros(3)})
    assert "unmatched file tensors: block2.layer.0.extra.weight" in _one_line_error(path)


def test_a_missing_tensor_is_named(tmp_path):
    path = _trades_file(tmp_path, lambda sd: {k: v for k, v in sd.items() if "convShortcut" not in k})
    message = _one_line_error(path)
    assert "missing from the file: block2.layer.0.shortcut.weight, block3.layer.0.shortcut.weight" in message


def test_the_wrong_architecture_names_the_shapes_and_the_likely_model(tmp_path):
    path = _trades_file(tmp_path)
    message = _one_line_error(path, dataset="cifar100")
    assert "fc.bias (10,) vs (100,), fc.weight (10, 64) vs (100, 64)" in message
    assert "looks like wrn-10-1" in message
    assert "looks like wrn-10-1" in _one_line_error(path, model="wrn-10-2")
    assert "looks like wrn-10-1" in _one_line_error(path, model="preactresnet18")


@pytest.mark.parametrize("content, needle", [
    ({"a": 1}, "not a state dict (found a dict with keys a)"),
    ([torch.zeros(2)], "not a state dict (found a list)"),
    ({"state_dict": {"w": 1}}, "not a state dict"),
    (nn.Linear(2, 2), "not loadable as a tensors-only PyTorch file"),  # a pickled module: never unpickled
    (b"not a torch file", "not loadable as a tensors-only PyTorch file"),
    ({"foo.weight": torch.zeros(2)}, "unknown layout; tried ratkit (needs mean, std, head.weight); trades-wrn"),
], ids=["dict-of-int", "list", "nested-non-tensors", "pickled-module", "garbage", "unknown-layout"])
def test_anything_but_a_known_state_dict_is_refused_in_one_line(tmp_path, content, needle):
    path = tmp_path / "thing.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    assert needle in _one_line_error(path)


def test_unknown_model_dataset_and_file_are_one_line_errors(tmp_path):
    path = _trades_file(tmp_path)
    assert "unknown model 'resnet-9'" in _one_line_error(path, model="resnet-9")
    assert "depth must be 6n+4" in _one_line_error(path, model="wrn-11-1")
    assert "unknown dataset" in _one_line_error(path, dataset="imagenet")
    assert "no such file" in _one_line_error(tmp_path / "absent.pt")


# --------------------------------------------------------------------------- export


def _documented_rebuild() -> str:
    """The plain-torch recipe of docs/interop.md (the python block that loads the state dict)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return next(b for b in blocks if "load_state_dict" in b)


def test_export_then_the_documented_plain_torch_rebuild_gives_identical_logits(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ours = randomised(build_model("wrn-10-2", mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)))
    ckpt = save_model(tmp_path / "best", ours, model_spec("wrn-10-2", mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25]),
                      {"dataset": "cifar10"})
    pt, js = export_checkpoint(ckpt, tmp_path / "model.pt")
    assert (pt, js) == (tmp_path / "model.pt", tmp_path / "model.json")
    info = json.loads(js.read_text())
    assert (info["architecture"], info["dataset"], info["num_classes"]) == ("wrn-10-2", "cifar10", 10)
    assert info["kwargs"]["depth"] == 10 and info["kwargs"]["widen_factor"] == 2
    assert info["mean"] == pytest.approx([0.4, 0.5, 0.6]) and info["std"] == pytest.approx([0.2, 0.3, 0.25])
    state = torch.load(pt, map_location="cpu", weights_only=True)
    assert set(state) == set(ours.state_dict()) and all(isinstance(v, torch.Tensor) for v in state.values())

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_documented_rebuild(), scope)  # noqa: S102 - our own documentation
    assert not any(p.__module__.startswith("ratkit") for p in map(type, scope["model"].modules()))
    x = images()
    with torch.no_grad():
        assert torch.equal(scope["model"](x), ours(x))


def test_an_exported_checkpoint_imports_back_unchanged(tmp_path):
    foreign = randomised(TradesWideResNet(10, 1))
    torch.save(foreign.state_dict(), tmp_path / "model.pt")
    ckpt = import_state_dict(tmp_path / "model.pt", "wrn-10-1", "cifar10", tmp_path / "a")
    pt, _ = export_checkpoint(ckpt, tmp_path / "exported.pt")
    again = import_state_dict(pt, "wrn-10-1", "cifar10", tmp_path / "b")
    assert load_model(again)[1]["imported_from"]["layout"] == "ratkit"
    assert_same_logits(foreign, again, images())


def test_export_refuses_a_missing_checkpoint_and_a_json_target(tmp_path):
    with pytest.raises(InteropError, match="no such checkpoint"):
        export_checkpoint(tmp_path / "absent.safetensors", tmp_path / "x.pt")
    with pytest.raises(InteropError, match="JSON goes beside it"):
        export_checkpoint(tmp_path / "absent.safetensors", tmp_path / "x.json")


# --------------------------------------------------------------------------- command line


def _parser():
    return build_parser()


def test_rat_import_and_rat_export_parse_and_run(tmp_path, capsys):
    foreign = randomised(TradesWideResNet(10, 1))
    torch.save(foreign.state_dict(), tmp_path / "model.pt")
    args = _parser().parse_args(["import", str(tmp_path / "model.pt"), "--model", "wrn-10-1", "--dataset", "cifar10",
                                 "--out", str(tmp_path / "ck"), "--mean", "0.5", "--std", "0.25"])
    assert args.mean == [0.5] and args.std == [0.25]
    assert args.func(args) == 0
    assert "layout trades-wrn -> wrn-10-1" in capsys.readouterr().out
    normalise = lambda x: (x - 0.5) / 0.25  # noqa: E731
    assert_same_logits(foreign, tmp_path / "ck.safetensors", images(), normalise)

    args = _parser().parse_args(["export", str(tmp_path / "ck.safetensors"), "--out", str(tmp_path / "e.pt")])
    assert args.func(args) == 0
    assert (tmp_path / "e.pt").is_file() and (tmp_path / "e.json").is_file()

    args = _parser().parse_args(["import", str(tmp_path / "e.json"), "--dataset", "cifar10", "--out", "x"])
    with pytest.raises(InteropError, match="not loadable"):
        args.func(args)


def test_an_authors_wrn_file_is_imported_and_evaluated_in_two_commands(tmp_path):
    """rat import, then rat eval --json: the verdicts are the original module's on the same images."""
    import json

    from helpers import run_rat
    from test_data import write_cifar10

    write_cifar10(tmp_path / "data")
    foreign = randomised(TradesWideResNet(10, 1, sub_block1=True))
    state = OrderedDict((f"module.{k}", v) for k, v in foreign.state_dict().items())  # DataParallel
    torch.save(state, tmp_path / "model-wrn.pt")
    imported = run_rat("import", str(tmp_path / "model-wrn.pt"), "--model", "wrn-10-1", "--dataset", "cifar10",
                       "--out", str(tmp_path / "wrn.safetensors"))
    assert imported.returncode == 0, imported.stderr
    evaluated = run_rat("eval", str(tmp_path / "wrn.safetensors"), "--attacks", "clean", "--data-dir",
                        str(tmp_path / "data"), "--json", str(tmp_path / "eval.json"), "--quiet")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    from ratkit.data import load_dataset

    test = load_dataset("cifar10", "test", data_dir=tmp_path / "data")
    with torch.no_grad():
        expected = "".join("1" if c else "0" for c in (foreign(test.x).argmax(1) == test.y).tolist())
    assert report["attacks"]["clean"]["correct"] == expected
