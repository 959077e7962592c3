"""An interrupted evaluation resumes from its per-batch results to identical numbers (issue 17);
evaluation is float32 on GPUs too (TF32 off inside, restored after)."""

import pytest
import torch

import ratkit.evaluate.protocol as evaluate_module
from ratkit.evaluate.chunks import AttackChunks, ChunkStore
from ratkit.evaluate import evaluate
from ratkit.models import build_model

ATTACKS = ("clean", "fgsm", "pgd20", "cw30", "aa")


def _model():
    torch.manual_seed(0)
    return build_model("smallcnn", num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,),
                       channels=(4, 8), hidden=16)


def _data(model, n=12):
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    with torch.no_grad():
        y[: n // 2] = model(x[: n // 2]).argmax(1)  # half clean-correct: the attacks have work to do
    return x, y


class FakeAutoAttack:
    """Stands in for pyautoattack (its Square attack spends minutes on one surviving image of an
    untrained model): re-seeded on every call like the real one, so a chunk's result does not
    depend on the chunks before it; counts its calls."""

    calls = 0

    def __init__(self, model, *, eps, seed, **kw):
        self.model, self.eps, self.seed = model, eps, seed

    def run_standard_evaluation(self, x, y, batch_size):
        FakeAutoAttack.calls += 1
        g = torch.Generator().manual_seed(self.seed)
        x_adv = (x + self.eps * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)
        with torch.no_grad():
            return x_adv, self.model(x_adv).argmax(1)


@pytest.fixture(autouse=True)
def fake_autoattack(monkeypatch):
    import pyautoattack

    monkeypatch.setattr(pyautoattack, "AutoAttack", FakeAutoAttack)
    FakeAutoAttack.calls = 0


def _run(model, x, y, eps=0.1, **kw):
    return evaluate(model, x, y, dataset="synthetic", eps=eps, attacks=ATTACKS, batch_size=4, aa_n=8,
                    seed=5, quiet=True, **kw)


def _verdicts(report):
    return {k: (r.accuracy, r.correct) for k, r in report.attacks.items()}, report.robust_accuracy


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_after", [4, 8, 13])  # in FGSM, in PGD-20, in AutoAttack
def test_an_interrupted_evaluation_resumes_to_identical_numbers(tmp_path, monkeypatch, stop_after):
    model = _model()
    x, y = _data(model)
    reference = _run(model, x, y)  # uninterrupted, nothing on disk
    state = tmp_path / "state"

    saved, original_save = [], AttackChunks.save

    def save_then_stop(self, k, tensors):
        original_save(self, k, tensors)
        saved.append((self.name, k))
        if len(saved) == stop_after:
            raise Interrupt

    monkeypatch.setattr(AttackChunks, "save", save_then_stop)
    with pytest.raises(Interrupt):
        _run(model, x, y, state_dir=state)
    monkeypatch.setattr(AttackChunks, "save", original_save)
    assert len(list(state.glob("*/*.safetensors"))) == stop_after

    attacked, FakeAutoAttack.calls = [], 0
    original_pgd = evaluate_module.pgd
    monkeypatch.setattr(evaluate_module, "pgd", lambda *a, **k: attacked.append(1) or original_pgd(*a, **k))
    resumed = _run(model, x, y, state_dir=state)
    assert _verdicts(resumed) == _verdicts(reference)
    # the finished batches were read back, not attacked again (3 batches of 12 per PGD-engine attack)
    done_pgd_batches = sum(1 for name, _ in saved if name in ("fgsm", "pgd20", "cw30"))
    assert len(attacked) == 9 - done_pgd_batches
    assert FakeAutoAttack.calls == 2 - sum(1 for name, _ in saved if name == "aa")
    assert not state.exists()  # removed once the report is complete


def test_kept_adversarial_inputs_survive_the_resume(tmp_path, monkeypatch):
    model = _model()
    x, y = _data(model)
    reference = _run(model, x, y, keep_adversarial=True)
    original_save = AttackChunks.save
    calls = []

    def save_then_stop(self, k, tensors):
        original_save(self, k, tensors)
        calls.append(k)
        if len(calls) == 7:
            raise Interrupt

    monkeypatch.setattr(AttackChunks, "save", save_then_stop)
    with pytest.raises(Interrupt):
        _run(model, x, y, keep_adversarial=True, state_dir=tmp_path / "s")
    monkeypatch.setattr(AttackChunks, "save", original_save)
    resumed = _run(model, x, y, keep_adversarial=True, state_dir=tmp_path / "s")
    assert torch.equal(resumed.adversarial["x_adv"], reference.adversarial["x_adv"])
    assert torch.equal(resumed.adversarial["attack"], reference.adversarial["attack"])


def test_chunks_of_another_evaluation_are_discarded(tmp_path):
    model = _model()
    x, y = _data(model)
    key = {"weights": "a", "eps": 0.1}
    store = ChunkStore.open(tmp_path / "s", key)
    store.attack("pgd20").save(0, {"predicted": torch.zeros(4, dtype=torch.long)})
    assert ChunkStore.open(tmp_path / "s", key).attack("pgd20").load(0) is not None  # same evaluation: kept
    assert ChunkStore.open(tmp_path / "s", {**key, "eps": 0.2}).attack("pgd20").load(0) is None
    # and end to end: a state written for other weights does not leak into this model's report
    other = _model()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    _run(other, x, y, state_dir=tmp_path / "t")
    assert _verdicts(_run(model, x, y, state_dir=tmp_path / "t")) == _verdicts(_run(model, x, y))


def test_evaluation_turns_tf32_off_inside_and_restores_it():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _model()

        def forward(self, x):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return self.inner(x)

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
        evaluate(Probe(), x, y, dataset="synthetic", eps=0.1, attacks=("clean", "fgsm"), quiet=True)
        assert seen and set(seen) == {(False, False)}
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_chunks_from_another_devices_generator_are_reused_with_a_warning(tmp_path, monkeypatch):
    """Chunks written on a GPU before the evaluation's generator was always on the CPU hold a CUDA
    generator's state (16 bytes), which a CPU generator cannot take: the verdicts are reused, with
    a warning, instead of the resume failing."""
    model = _model()
    x, y = _data(model)
    reference = _run(model, x, y)
    saved, original_save = [], AttackChunks.save

    def save_foreign_state_then_stop(self, k, tensors):
        original_save(self, k, {**tensors, "generator": torch.zeros(16, dtype=torch.uint8)})
        saved.append(k)
        if len(saved) == 9:  # clean, FGSM and PGD-20 complete
            raise Interrupt

    monkeypatch.setattr(AttackChunks, "save", save_foreign_state_then_stop)
    with pytest.raises(Interrupt):
        _run(model, x, y, state_dir=tmp_path / "s")
    monkeypatch.setattr(AttackChunks, "save", original_save)
    with pytest.warns(UserWarning, match="another device's random generator"):
        resumed = _run(model, x, y, state_dir=tmp_path / "s")
    assert _verdicts(resumed) == _verdicts(reference)


def test_two_evaluations_of_one_state_directory_keep_their_own_chunks(tmp_path):
    """Two evaluations with other settings (here eps), interleaved as two processes would be: each
    resumes its own chunks, neither empties nor reads the other's."""
    model = _model()
    x, y = _data(model)
    a = ChunkStore.open(tmp_path / "s", {"weights": "w", "eps": 0.02})
    b = ChunkStore.open(tmp_path / "s", {"weights": "w", "eps": 0.3})
    a.attack("pgd20").save(0, {"predicted": torch.zeros(4, dtype=torch.long)})
    b.attack("pgd20").save(0, {"predicted": torch.ones(4, dtype=torch.long)})
    a2 = ChunkStore.open(tmp_path / "s", {"weights": "w", "eps": 0.02})  # the first resumes after the second began
    assert torch.equal(a2.attack("pgd20").load(0)["predicted"], torch.zeros(4, dtype=torch.long))
    assert torch.equal(b.attack("pgd20").load(0)["predicted"], torch.ones(4, dtype=torch.long))
    a2.remove()
    assert (tmp_path / "s").exists() and b.attack("pgd20").load(0) is not None  # b's chunks survive a's end
    b.remove()
    assert not (tmp_path / "s").exists()
    # end to end: both reports equal their uninterrupted selves through one shared state directory
    stop = _run(model, x, y, state_dir=tmp_path / "t", eps=0.3)
    assert _verdicts(_run(model, x, y, state_dir=tmp_path / "t")) == _verdicts(_run(model, x, y))
    assert _verdicts(stop) == _verdicts(_run(model, x, y, eps=0.3))
