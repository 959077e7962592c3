"""Specifications of the flatness tools: loss landscapes and Hessian curvature."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ratkit.analysis import (
    adversarial_examples,
    default_attack,
    filter_normalized_directions,
    format_hessian,
    format_landscapes,
    hessian_params,
    hessian_spectrum,
    hessian_vector_product,
    load_checkpoint_examples,
    loss_landscape,
    plot_landscape_1d,
    plot_landscape_2d,
    random_direction,
    run_hessian,
    run_landscape,
)
from ratkit.models import RobustModel

# torch itself warns when forward-mode AD first loads its decompositions (torch.jit.script inside torch)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

EPS = 0.1
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class TinyConvNet(RobustModel):
    """167 parameters (conv, BatchNorm, two linear layers): small enough for an explicit Hessian."""

    def __init__(self, fail_at_call: int | None = None):
        super().__init__(mean=(0.5,), std=(0.25,))
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(12, 8)
        self.head = nn.Linear(8, 3)
        self.calls = 0
        self.fail_at_call = fail_at_call

    def body(self, z):
        z = torch.relu(self.bn(self.conv(z)))
        return torch.relu(self.fc(F.avg_pool2d(z, 2).flatten(1)))

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("boom: forward failed on purpose")
        return super().forward(x)


def _model(seed=3, **kwargs):
    torch.manual_seed(seed)
    return TinyConvNet(**kwargs).eval()


def _data(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _explicit_hessian(model, x, y, names):
    """The full Hessian of the mean cross-entropy over the flat vector of the named parameters."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().flatten() for n in names])

    def loss(v):
        chunks = torch.split(v, [s.numel() for s in shapes])
        overrides = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return F.cross_entropy(functional_call(model, overrides, (x,), strict=False), y)

    return torch.func.hessian(loss)(flat)


def _by_magnitude(h, k):
    ev = torch.linalg.eigvalsh(h)
    return ev[ev.abs().argsort(descending=True)][:k]


def _hutchinson_stderr(h, probes):
    """Rademacher probes: Var(z^T H z) = 2 (||H||_F^2 - sum_i H_ii^2)."""
    return (2 * (h.pow(2).sum() - h.diag().pow(2).sum()) / probes).sqrt().item()


def _examples_for(model, x, y, loss, batch_size):
    if loss == "clean":
        return x
    return adversarial_examples(model, x, y, default_attack(EPS), seed=0, batch_size=batch_size)


def _snapshot(model):
    """Every parameter and buffer as raw bytes, plus the parameter objects and all mode flags."""
    state = {k: v.detach().clone().reshape(-1).view(torch.uint8) for k, v in model.state_dict().items()}
    return state, [id(p) for p in model.parameters()], [m.training for m in model.modules()]


def _assert_untouched(model, snapshot):
    state, ids, modes = snapshot
    after, after_ids, after_modes = _snapshot(model)
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert ids == after_ids
    assert modes == after_modes
    assert all(p.grad is None for p in model.parameters())


def _mixed_modes(model):
    """Train mode with a frozen BatchNorm: restoring only the root flag would not be enough."""
    model.train()
    model.bn.eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


# ----------------------------------------------------------------------------- Hessian


@pytest.mark.parametrize("loss", ["clean", "adversarial"])
def test_top_eigenvalues_match_the_explicit_hessian_by_magnitude(loss):
    model, (x, y) = _model(), _data()
    expected = _by_magnitude(_explicit_hessian(model, _examples_for(model, x, y, loss, 8), y,
                                               hessian_params(model)), 3)
    result = hessian_spectrum(model, x, y, loss=loss, eps=EPS, top_k=3, probes=0, max_iter=300,
                              batch_size=8, quiet=True)
    assert all(result.converged)
    assert result.eigenvalues == pytest.approx(expected.tolist(), rel=0.01)
    assert min(result.eigenvalues) < 0  # a negative one is among the top 3 here: "top" is by magnitude
    assert result.trace is None and result.settings.num_params == 167


@pytest.mark.parametrize("loss", ["clean", "adversarial"])
def test_hutchinson_trace_agrees_with_the_explicit_trace_within_its_standard_error(loss):
    model, (x, y) = _model(), _data()
    h = _explicit_hessian(model, _examples_for(model, x, y, loss, 8), y, hessian_params(model))
    probes = 300
    result = hessian_spectrum(model, x, y, loss=loss, eps=EPS, top_k=0, probes=probes, batch_size=8, quiet=True)
    assert result.trace_probes == probes
    assert abs(result.trace - h.trace().item()) < 4 * result.trace_stderr
    # the reported standard error is itself right: close to the exact one for Rademacher probes
    assert result.trace_stderr == pytest.approx(_hutchinson_stderr(h, probes), rel=0.25)


def test_weights_only_hessian_is_the_sub_hessian_of_the_parameters_with_dim_above_one():
    model, (x, y) = _model(), _data()
    names = hessian_params(model, "weights")
    assert names == ["conv.weight", "fc.weight", "head.weight"]
    expected = _by_magnitude(_explicit_hessian(model, x, y, names), 1)
    result = hessian_spectrum(model, x, y, params="weights", top_k=1, probes=0, max_iter=300, quiet=True)
    assert result.settings.num_params == 27 + 96 + 24
    assert result.eigenvalues[0] == pytest.approx(expected[0].item(), rel=0.01)


def test_hessian_vector_product_sums_batches_into_the_hessian_of_the_mean_loss():
    model, (x, y) = _model(), _data()
    names = hessian_params(model)
    h = _explicit_hessian(model, x, y, names)
    hvp, primals = hessian_vector_product(model, x, y, names, batch_size=5)  # 5 + 5 + 5 + 1 examples
    v = tuple(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) for p in primals)
    got = torch.cat([t.flatten() for t in hvp(v)])
    expected = h @ torch.cat([t.flatten() for t in v])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- landscape


def test_landscape_at_the_origin_is_the_models_own_clean_loss_and_accuracy():
    model, (x, y) = _model(), _data()
    with torch.no_grad():
        logits = model(x)
    loss, acc = F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()
    one = loss_landscape(model, x, y, dim=1, points=5, batch_size=6, quiet=True)
    two = loss_landscape(model, x, y, dim=2, points=3, batch_size=6, quiet=True)
    assert one.coordinates[2] == 0.0 and two.coordinates[1] == 0.0
    assert one.clean_loss[2] == pytest.approx(loss, rel=1e-6) and one.clean_accuracy[2] == acc
    assert two.clean_loss[1][1] == pytest.approx(loss, rel=1e-6) and two.clean_accuracy[1][1] == acc
    assert one.adversarial_loss is None
    # moving the weights changes the loss
    assert one.clean_loss[0] != pytest.approx(loss, rel=1e-3)


def test_fixed_adversarial_landscape_at_the_origin_is_the_loss_on_the_fixed_adversarial_batch():
    model, (x, y) = _model(), _data()
    x_adv = adversarial_examples(model, x, y, default_attack(EPS), seed=4, batch_size=8)
    with torch.no_grad():
        logits = model(x_adv)
    result = loss_landscape(model, x, y, dim=2, points=3, adversarial="fixed", eps=EPS, seed=4, batch_size=8,
                            quiet=True)
    assert result.adversarial_loss[1][1] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert result.adversarial_accuracy[1][1] == (logits.argmax(1) == y).float().mean().item()
    assert result.adversarial_loss[1][1] > result.clean_loss[1][1]


def test_regenerated_adversarial_landscape_equals_the_fixed_one_at_the_origin_only():
    model, (x, y) = _model(), _data()
    kw = dict(dim=1, points=5, span=0.5, eps=EPS, seed=0, batch_size=8, quiet=True)
    fixed = loss_landscape(model, x, y, adversarial="fixed", **kw)
    regen = loss_landscape(model, x, y, adversarial="regenerated", **kw)
    assert fixed.clean_loss == regen.clean_loss  # same directions
    assert regen.adversarial_loss[2] == fixed.adversarial_loss[2]
    for i in (0, 1, 3, 4):
        assert regen.adversarial_loss[i] != pytest.approx(fixed.adversarial_loss[i], rel=1e-4)


def test_same_seed_gives_the_same_directions_for_two_models_of_one_architecture():
    a, b = _model(seed=0), _model(seed=1)
    raw_a = random_direction(a, torch.Generator().manual_seed(7))
    raw_b = random_direction(b, torch.Generator().manual_seed(7))
    assert all(torch.equal(raw_a[n], raw_b[n]) for n in raw_a)
    da, db = filter_normalized_directions(a, 2, seed=7), filter_normalized_directions(b, 2, seed=7)
    wa, wb = dict(a.named_parameters()), dict(b.named_parameters())
    for k in range(2):
        for name, w in wa.items():
            if w.dim() > 1:  # the same unit filters, scaled by each model's own filter norms
                shape = (-1,) + (1,) * (w.dim() - 1)
                unit_a = da[k][name] / w.detach().flatten(1).norm(dim=1).view(shape)
                unit_b = db[k][name] / wb[name].detach().flatten(1).norm(dim=1).view(shape)
                assert torch.allclose(unit_a, unit_b, rtol=1e-5, atol=1e-7)
    assert not torch.equal(da[0]["conv.weight"], da[1]["conv.weight"])
    other = filter_normalized_directions(a, 1, seed=8)
    assert not torch.equal(da[0]["conv.weight"], other[0]["conv.weight"])


def test_filter_normalised_directions_have_the_weight_filter_norms_and_leave_bias_and_bn_alone():
    model = _model()
    (d,) = filter_normalized_directions(model, 1, seed=0)
    (with_bias,) = filter_normalized_directions(model, 1, seed=0, bias_bn="weights")
    for name, w in model.named_parameters():
        if w.dim() > 1:
            assert torch.allclose(d[name].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1), rtol=1e-5)
            assert torch.equal(d[name], with_bias[name])
        else:  # biases and BatchNorm weight/bias
            assert torch.count_nonzero(d[name]) == 0
            assert torch.equal(with_bias[name], w.detach())


# ----------------------------------------------------------------- no hidden state changes


RUNS = {
    "landscape-regenerated": lambda m, x, y: loss_landscape(m, x, y, dim=1, points=3, adversarial="regenerated",
                                                            eps=EPS, batch_size=8, quiet=True),
    "landscape-fixed-2d": lambda m, x, y: loss_landscape(m, x, y, dim=2, points=3, adversarial="fixed", eps=EPS,
                                                         batch_size=8, quiet=True),
    "hessian-adversarial": lambda m, x, y: hessian_spectrum(m, x, y, loss="adversarial", eps=EPS, top_k=2,
                                                            max_iter=20, probes=5, batch_size=8, quiet=True),
}


@pytest.mark.parametrize("tool", list(RUNS))
def test_weights_buffers_and_modes_are_bit_identical_after_a_run_and_after_an_exception_mid_way(tool):
    x, y = _data()
    model = _mixed_modes(_model())
    before = _snapshot(model)
    RUNS[tool](model, x, y)
    _assert_untouched(model, before)
    total = model.calls
    assert total > 4

    failing = _mixed_modes(_model(fail_at_call=total // 2))
    before = _snapshot(failing)
    with pytest.raises(RuntimeError, match="boom"):
        RUNS[tool](failing, x, y)
    _assert_untouched(failing, before)


# ------------------------------------------------------------------------ results, plots


def test_results_serialise_to_json_with_their_settings():
    model, (x, y) = _model(), _data(8)
    land = loss_landscape(model, x, y, dim=1, points=3, adversarial="fixed", eps=EPS, label="m", quiet=True)
    hess = hessian_spectrum(model, x, y, top_k=1, max_iter=5, probes=2, quiet=True)
    land_json, hess_json = json.loads(json.dumps(land.to_json())), json.loads(json.dumps(hess.to_json()))
    assert land_json["settings"]["attack"]["steps"] == 10 and land_json["settings"]["adversarial"] == "fixed"
    assert land_json["label"] == "m" and len(land_json["clean_loss"]) == 3
    assert hess_json["settings"]["loss"] == "clean" and hess_json["trace_probes"] == 2


def test_png_writers_write_png_files_for_1d_overlays_and_2d_contours(tmp_path):
    x, y = _data(8)
    kw = dict(points=3, eps=EPS, batch_size=8, quiet=True)
    first = loss_landscape(_model(seed=0), x, y, adversarial="fixed", label="first", **kw)
    second = loss_landscape(_model(seed=1), x, y, label="second", **kw)
    plane = loss_landscape(_model(), x, y, dim=2, adversarial="fixed", **kw)
    paths = [plot_landscape_1d([first, second], tmp_path / "curves.png"),
             plot_landscape_2d(plane, tmp_path / "plane" / "contour.png")]
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="1-D"):
        plot_landscape_1d([plane], tmp_path / "bad.png")


def test_bad_settings_are_refused_with_the_setting_named():
    model, (x, y) = _model(), _data(4)
    with pytest.raises(ValueError, match="points"):
        loss_landscape(model, x, y, points=4)
    with pytest.raises(ValueError, match="adversarial"):
        loss_landscape(model, x, y, adversarial="sometimes")
    with pytest.raises(ValueError, match="eps"):
        loss_landscape(model, x, y, adversarial="fixed")
    with pytest.raises(ValueError, match="loss"):
        hessian_spectrum(model, x, y, loss="robust")


SMALL = dict(num_classes=10, in_channels=1, mean=(0.5,), std=(0.25,), channels=(2, 4), hidden=8)


def _checkpoint(directory, seed=0):
    from ratkit.checkpoints import save_model
    from ratkit.models import build_model, model_spec

    torch.manual_seed(seed)
    model = build_model("smallcnn", **SMALL)
    return model, save_model(directory / "best", model, model_spec("smallcnn", **SMALL), {"dataset": "synthetic"})


def test_checkpoint_loader_gives_the_model_the_first_test_images_and_the_dataset_eps(tmp_path):
    from ratkit.data import load_dataset

    model, path = _checkpoint(tmp_path)
    loaded = load_checkpoint_examples(tmp_path, n=5)
    test = load_dataset("synthetic", "test").first(5)
    assert torch.equal(loaded.x, test.x) and torch.equal(loaded.y, test.y)
    assert loaded.eps == pytest.approx(0.1) and loaded.dataset == "synthetic" and loaded.path == str(path)
    assert not loaded.model.training
    assert torch.equal(loaded.model(loaded.x), model.eval()(loaded.x))


def test_landscape_and_hessian_jobs_write_json_and_png_for_checkpoints(tmp_path):
    _checkpoint(tmp_path / "a", seed=0)
    _checkpoint(tmp_path / "b", seed=1)
    land = run_landscape([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out", n=4, points=3,
                         adversarial="fixed", quiet=True)
    assert [r.label for r in land.results] == ["a/best", "b/best"]
    assert {p.name for p in land.files} == {"landscape.json", "landscape_1d.png"}
    saved = json.loads((tmp_path / "out" / "landscape.json").read_text())
    assert saved["dataset"] == "synthetic" and saved["landscapes"][0]["settings"]["attack"]["eps"] == 0.1
    assert "a/best" in format_landscapes(land.results)
    hess = run_hessian(tmp_path / "a", out=tmp_path / "out", n=4, top_k=1, max_iter=3, probes=2, quiet=True)
    assert [r.settings.loss for r in hess.results] == ["clean", "adversarial"]
    assert json.loads(hess.files[0].read_text())["hessian"][1]["settings"]["attack"]["steps"] == 10
    assert "trace" in format_hessian(hess.results)
    with pytest.raises(ValueError, match="points"):
        run_landscape([tmp_path / "a"], out=tmp_path / "out", points=4)


def test_rat_landscape_and_rat_hessian_commands_print_and_write_their_files(tmp_path):
    from helpers import run_rat

    _checkpoint(tmp_path / "a", seed=0)
    _checkpoint(tmp_path / "b", seed=1)
    out = tmp_path / "out"
    land = run_rat("landscape", str(tmp_path / "a"), str(tmp_path / "b"), "--n", "4", "--points", "3",
                   "--dim", "2", "--out", str(out), "--quiet")
    assert land.returncode == 0, land.stderr
    assert "a/best" in land.stdout and "adversarial (fixed)" in land.stdout
    assert (out / "landscape.json").exists() and len(list(out.glob("landscape_2d_*.png"))) == 2
    hess = run_rat("hessian", str(tmp_path / "a"), "--n", "4", "--max-iter", "3", "--probes", "2",
                   "--loss", "clean", "--out", str(out), "--quiet")
    assert hess.returncode == 0, hess.stderr
    assert "top eigenvalues" in hess.stdout
    assert [r["settings"]["loss"] for r in json.loads((out / "hessian.json").read_text())["hessian"]] == ["clean"]


@pytest.mark.parametrize("args,needle", [(["landscape", "{a}", "--points", "4"], "points"),
                                         (["landscape", "{a}", "--n", "0"], "--n"),
                                         (["hessian", "{missing}"], "no such checkpoint")])
def test_analysis_commands_refuse_bad_input_with_one_line_and_exit_2(tmp_path, args, needle):
    from helpers import run_rat

    _checkpoint(tmp_path / "a")
    args = [a.format(a=tmp_path / "a", missing=tmp_path / "missing.safetensors") for a in args]
    result = run_rat(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_output_statistics_are_the_means_of_softmax_confidence_logit_norm_and_cross_entropy():
    from ratkit.analysis import output_statistics

    class FixedLogits(nn.Module):
        """Logits [3, 4, 0] for every image (a parameter so the analysis finds a device)."""

        def __init__(self):
            super().__init__()
            self.logits = nn.Parameter(torch.tensor([3.0, 4.0, 0.0]))

        def forward(self, x):
            return self.logits.expand(len(x), 3)

    model = FixedLogits().train()
    x, y = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 1, 2])
    (clean,) = output_statistics(model, x, y)
    prob = torch.tensor([3.0, 4.0, 0.0]).softmax(0)
    assert clean.inputs == "clean" and clean.n == 4
    assert clean.top_probability == pytest.approx(prob[1].item())
    assert clean.true_probability == pytest.approx((prob[0] + 2 * prob[1] + prob[2]).item() / 4)
    assert clean.logit_norm == pytest.approx(5.0)
    assert clean.loss == pytest.approx(-(prob[0].log() + 2 * prob[1].log() + prob[2].log()).item() / 4)
    assert model.training  # the mode is restored
