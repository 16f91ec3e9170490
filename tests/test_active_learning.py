"""bench.active_learning in its --quick configuration (16 px, a pool of 48, two rounds, one seed):
the loop's bookkeeping, MC dropout, reproducibility and the outputs' structure. A few seconds on one core.

    pytest tests/test_active_learning.py
"""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bench import active_learning as al


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The whole --quick run, with the MC-dropout function spied on."""
    tmp = tmp_path_factory.mktemp("al")
    page = tmp / "page.md"
    page.write_text("# Page\n\nintro kept\n\n" + al.MARK_BEGIN + "\nold\n" + al.MARK_END + "\n\noutro kept\n")
    calls = []
    real = al.mc_dropout_samples

    def spy(model, x, passes):
        seen = {"dropout": [], "bn": []}
        hooks = [m.register_forward_hook(lambda mod, i, o, k=("dropout" if isinstance(m, nn.Dropout) else "bn"):
                                         seen[k].append(mod.training))
                 for m in model.modules() if isinstance(m, (nn.Dropout, nn.BatchNorm2d))]
        try:
            out = real(model, x, passes)
        finally:
            for h in hooks:
                h.remove()
        calls.append({"out": out, "n": len(x), "passes": passes, **seen})
        return out

    argv = ["--quick", "--data", str(tmp / "data.npz"), "--results", str(tmp / "results.json"),
            "--markdown", str(page), "--plot", str(tmp / "plot.png")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(al, "mc_dropout_samples", spy)
        out = al.main(argv, log=lambda *a: None)
    _, cfg = al.parse_args(argv)
    with np.load(tmp / "data.npz") as z:
        data = {k: z[k] for k in z.files if k != "key"}
    return {"out": out, "cfg": cfg, "tmp": tmp, "page": page, "calls": calls, "data": data}


def test_quick_config_is_tiny_and_complete(run):
    cfg = run["cfg"]
    assert cfg.size == 16 and cfg.pool <= 100 and len(cfg.budgets) == 3 and set(cfg.strategies) == set(al.STRATEGIES)
    assert run["data"]["pool_x"].shape == (cfg.pool, 16, 16, 3) and run["data"]["test_x"].shape == (cfg.test, 16, 16, 3)


def test_labelled_counts_follow_the_budgets(run):
    cfg = run["cfg"]
    for st, by_seed in run["out"]["results"].items():
        for rounds in by_seed.values():
            assert [r["labels"] for r in rounds] == list(cfg.budgets)
            labelled = cfg.start
            for r, budget in zip(rounds, cfg.budgets):
                labelled += len(r["acquired"])
                assert labelled == budget, st
                assert sum(r["acquired_classes"]) == len(r["acquired"])


def test_acquired_never_repeat_and_never_held_out(run):
    data = run["data"]
    held_out = {hashlib.sha1(im.tobytes()).hexdigest() for im in data["test_x"]}
    for st, by_seed in run["out"]["results"].items():
        for rounds in by_seed.values():
            acq = [i for r in rounds for i in r["acquired"]]
            assert len(acq) == len(set(acq)), f"{st} labelled a galaxy twice"
            assert all(0 <= i < len(data["pool_x"]) for i in acq)
            assert not {hashlib.sha1(data["pool_x"][i].tobytes()).hexdigest() for i in acq} & held_out
            # the recorded classes are the pool's true classes of those indices
            for r in rounds[1:]:
                assert r["acquired_classes"] == np.bincount(data["pool_y"][r["acquired"]], minlength=10).tolist()


def test_uncertainty_strategies_pick_by_their_scores(run):
    """Each acquisition is the top-k of that strategy's score on the unlabelled pool: recompute the
    first round's entropy pick from the start model."""
    cfg, data = run["cfg"], run["data"]
    prep = al.Prepared(data)
    state, acc = al.start_round(prep, 0, cfg)
    assert acc == run["out"]["results"]["entropy"]["0"][0]["accuracy"]
    model = al.SmallCNN(10, cfg.width, cfg.dropout)
    model.load_state_dict(state)
    scores = al.entropy(al.probabilities(model, prep.pool_x))
    k = cfg.budgets[1] - cfg.start
    assert run["out"]["results"]["entropy"]["0"][1]["acquired"] == np.argsort(-scores, kind="stable")[:k].tolist()


def test_random_acquisition_is_reproducible(run):
    cfg, prep = run["cfg"], al.Prepared(run["data"])
    a = al.run_strategy(prep, "random", 0, cfg)
    b = al.run_strategy(prep, "random", 0, cfg)
    assert [r["acquired"] for r in a] == [r["acquired"] for r in b]
    assert [r["acquired"] for r in a] == [r["acquired"] for r in run["out"]["results"]["random"]["0"]]
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
    x = prep.pool_x
    np.testing.assert_array_equal(al.acquisition_scores("random", None, x, 0, 5),
                                  al.acquisition_scores("random", None, x, 0, 5))
    assert not np.array_equal(al.acquisition_scores("random", None, x, 0, 5),
                              al.acquisition_scores("random", None, x, 0, 6))


def test_bald_runs_mc_dropout_with_dropout_on(run):
    cfg, calls = run["cfg"], run["calls"]
    assert len(calls) == len(cfg.budgets) - 1  # once per BALD round, by no other strategy
    for c in calls:
        assert c["out"].shape == (cfg.passes, c["n"], 10) and c["passes"] == cfg.passes
        assert np.ptp(c["out"], axis=0).max() > 1e-3, "the passes are equal: dropout was off"
        assert c["dropout"] == [True] * cfg.passes  # dropout in train mode in every pass
        assert c["bn"] and not any(c["bn"])  # batch norm in eval mode throughout
    assert calls[0]["n"] == cfg.pool and calls[1]["n"] == cfg.pool - (cfg.budgets[1] - cfg.start)


def test_mc_dropout_keeps_batch_norm_statistics():
    torch.manual_seed(0)
    model = al.SmallCNN(10, width=4, dropout=0.5).eval()
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bn:
        m.running_mean.normal_()
    before = [m.running_mean.clone() for m in bn]
    x = torch.randn(6, 3, 16, 16)
    s = al.mc_dropout_samples(model, x, passes=4)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bn))
    assert not np.allclose(s[0], s[1])
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="no dropout"):
        al.mc_dropout_samples(al.SmallCNN(10, width=4, dropout=0.0), x, passes=4)


def test_results_json_structure(run):
    cfg = run["cfg"]
    saved = json.loads((run["tmp"] / "results.json").read_text())
    assert saved["config"]["budgets"] == list(cfg.budgets)
    assert set(saved["results"]) == set(cfg.strategies)
    for by_seed in saved["results"].values():
        assert set(by_seed) == {str(s) for s in cfg.seeds}
        for rounds in by_seed.values():
            assert len(rounds) == len(cfg.budgets)
            assert all(0.0 <= r["accuracy"] <= 1.0 for r in rounds)
    summ = saved["summary"]
    for s in summ["strategies"].values():
        assert len(s["mean"]) == len(cfg.budgets) and all(0.0 <= m <= 1.0 for m in s["mean"])
    assert summ["target"]["accuracy"] == summ["strategies"]["random"]["mean"][-1]
    assert summ["target"]["saved"]["random"]["saving_pct"] is not None
    assert summ["target"]["saved"]["random"]["labels"] <= cfg.budgets[-1]


def test_markdown_block_replaced_in_place(run):
    cfg = run["cfg"]
    text = run["page"].read_text()
    assert text.startswith("# Page\n\nintro kept") and text.rstrip().endswith("outro kept")
    assert text.count(al.MARK_BEGIN) == 1 and text.count(al.MARK_END) == 1 and "\nold\n" not in text
    block = text.split(al.MARK_BEGIN)[1].split(al.MARK_END)[0]
    assert f"| strategy | {cfg.budgets[0]} labels |" in block
    rows = {line.split("|")[1].strip(): line for line in block.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in al.STRATEGIES}
    assert set(rows) == set(cfg.strategies)
    table = block.split("\n\n")[0]
    values = [float(v) for v in re.findall(r"\d+\.\d{3}", table)]
    assert len(values) == len(cfg.strategies) * len(cfg.table)  # one seed: no ± std
    assert all(0.0 <= v <= 1.0 for v in values)
    assert "saving vs random" in block


def test_plot_is_a_png_of_about_800_by_500(run):
    with Image.open(run["tmp"] / "plot.png") as im:
        assert im.format == "PNG" and im.size == (800, 500)


def test_labels_to_reach_by_hand():
    assert al.labels_to_reach([100, 200, 400], [0.5, 0.6, 0.8], 0.7) == pytest.approx(300.0)
    assert al.labels_to_reach([100, 200, 400], [0.5, 0.6, 0.8], 0.5) == 100.0
    assert al.labels_to_reach([100, 200, 400], [0.5, 0.6, 0.8], 0.81) is None
    # the first crossing counts, even where the curve dips later
    assert al.labels_to_reach([100, 200, 300], [0.5, 0.7, 0.6], 0.6) == pytest.approx(150.0)


def test_budgets_are_checked():
    with pytest.raises(SystemExit):
        al.parse_args(["--quick", "--budgets", "20,30"])  # must start at the start set size
    with pytest.raises(SystemExit):
        al.parse_args(["--quick", "--budgets", "10,30,20"])


def test_from_results_rebuilds_the_same_block(run, tmp_path):
    page = tmp_path / "again.md"
    out = al.main(["--from-results", str(run["tmp"] / "results.json"), "--markdown", str(page)], log=lambda *a: None)
    assert out["summary"] == run["out"]["summary"]
    old = run["page"].read_text().split(al.MARK_BEGIN)[1].split(al.MARK_END)[0]
    assert page.read_text().split(al.MARK_BEGIN)[1].split(al.MARK_END)[0] == old
