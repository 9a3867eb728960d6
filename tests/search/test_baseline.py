"""The baseline is trained once per search, and a candidate that starts from it is the run its recipe describes."""

from __future__ import annotations

import dataclasses

import pytest

DOMAIN = """
name: digits-auto
task: image-classification
data: {source: digits, test_fraction: 0.2, val_fraction: 0.1, seed: 0}
model: {name: lenet300_100, kwargs: {hidden1: 64, hidden2: 32}}
metric: accuracy
constraints: {max_size_bytes: 50, max_metric_drop: 0.5}
"""


@pytest.mark.slow
def test_a_search_trains_the_baseline_once_and_its_recipes_still_train_it(tmp_path, monkeypatch):
    from torchslim.domain import load_domain
    from torchslim.recipe import load_recipe
    from torchslim.runner import run_recipe
    from torchslim.search import SearchSettings, run_auto
    from torchslim.stages import STAGES

    trained: list[str] = []  # the recipe each real training of the baseline ran for
    train = STAGES["train"]

    def counting(ctx, cfg):
        trained.append(ctx.recipe.source)
        return train.run(ctx, cfg)

    monkeypatch.setitem(STAGES, "train", dataclasses.replace(train, run=counting))
    (tmp_path / "domain.yaml").write_text(DOMAIN)
    domain, out = load_domain(tmp_path / "domain.yaml"), tmp_path / "out"
    kwargs = dict(threads=1, settings=SearchSettings(baseline_epochs=2, max_epochs=2))
    lines: list[str] = []
    result = run_auto(domain, out, trials=3, log=lines.append, **kwargs)
    assert result.trials == 3 and len(trained) == 1
    assert [line.split(" in ")[0] for line in lines if line.startswith("baseline:")] == ["baseline: ready"]
    records = sorted(result.records, key=lambda r: r["number"])
    # every candidate reports the one trained baseline's figures (its bytes are the fp32 file with the candidate's
    # own manifest, which records the candidate's recipe: they are compared with a run from scratch below)
    for key in ("baseline_value", "baseline_val_value"):
        assert len({r[key] for r in records}) == 1, key
    assert records[0]["baseline_value"] == records[1]["baseline_value"] > 0.5  # trained: chance is 0.1

    # A candidate's recipe, run on its own, trains the baseline and gives the candidate's numbers exactly.
    metrics = run_recipe(load_recipe(out / "trials" / "1" / "recipe.yaml"), tmp_path / "scratch", threads=1,
                         log=lambda _m: None)
    assert len(trained) == 2
    for key in ("value", "val_value", "baseline_value", "baseline_val_value", "size_bytes", "baseline_size_bytes",
                "artifact_sha256"):
        assert metrics[key] == records[1][key], key

    # The same command with one more candidate reuses the baseline.
    lines.clear()
    again = run_auto(domain, out, trials=4, log=lines.append, **kwargs)
    assert again.trials == 4 and len(trained) == 2
    assert any(line.startswith("baseline: ready from earlier") for line in lines)
    assert len({r["baseline_value"] for r in again.records}) == 1
