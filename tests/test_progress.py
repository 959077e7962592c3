"""Progress in batch jobs: plain periodic lines with done/total and an ETA when stderr is no terminal."""

import io

from ratkit.progress import PlainProgress, progress


def test_plain_progress_prints_done_total_and_eta_at_most_once_per_interval(monkeypatch):
    clock = iter([0.0, 10.0, 30.0, 61.0, 70.0, 125.0])
    monkeypatch.setattr("ratkit.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = PlainProgress(total=100, desc="AutoAttack (standard)", unit="img", interval=60, stream=out)
    for _ in range(5):  # at t = 10, 30, 61, 70, 125 s
        bar.update(10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # after 61 s and after 125 s, not at every update
    assert "AutoAttack (standard): 30/100 img (30%)" in lines[0] and "ETA 2.4 min" in lines[0]
    assert "50/100 img (50%)" in lines[1]


def test_progress_is_plain_in_a_batch_log_and_silent_when_quiet(monkeypatch, capsys):
    monkeypatch.setenv("RAT_PROGRESS_INTERVAL", "0")
    with progress(4, "epoch 1/2", "step") as bar:  # pytest's stderr is not a terminal
        assert isinstance(bar, PlainProgress)
        bar.update(1)
        bar.update(1)
    assert capsys.readouterr().err.count("epoch 1/2: ") == 2
    with progress(4, "epoch 1/2", "step", quiet=True) as bar:
        bar.update(1)
    with progress(4, "epoch 1/2", "step", main=False) as bar:
        bar.update(1)
    assert capsys.readouterr().err == ""


def test_an_evaluation_in_a_batch_job_reports_its_progress(monkeypatch, capsys):
    import torch

    from ratkit.evaluate import evaluate
    from ratkit.models import build_model

    monkeypatch.setenv("RAT_PROGRESS_INTERVAL", "0")
    torch.manual_seed(0)
    model = build_model("smallcnn", channels=(4, 8), hidden=16)
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
    evaluate(model, x, y, dataset="fashion-mnist", eps=0.1, attacks=("clean", "pgd20"), batch_size=10,
             quiet=False)
    err = capsys.readouterr().err
    assert "PGD-20 (CE): 10/40 img" in err and "ETA" in err
