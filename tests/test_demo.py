"""The embedded demo, end to end in fast mode: the trained base model has real junctions, the value
model beats a constant, every method runs and the table is the same on a cached re-run; the CLI
says what each flag does, and the scan backend that ran is recorded, its fallback never hidden."""
import argparse
import csv
import json
import warnings
from dataclasses import replace

import pytest
import torch

import sia_kernels.demo.config as demo_config
from sia_kernels.cli import build_parser
from sia_kernels.demo import (COLUMNS, DemoConfig, add_demo_args, choice_step_entropies, demo_main, format_table,
                              heldout_prompts, load_or_train, run_demo, value_quality, with_backend)
from sia_kernels.ops import available_backends

METHODS = ["base", "dense_args", "sia", "random_gate", "best_of_n_base", "best_of_n_sia"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rows = run_demo(out, seed=0, fast=True)
    return out, rows


@pytest.fixture(scope="module")
def models(demo):
    out, _ = demo
    cfg = DemoConfig.make(seed=0, fast=True)
    torch.set_num_threads(1)
    base, vm, tok, info = load_or_train(out, cfg)
    assert info["cached"]
    return cfg, base, vm, tok


@pytest.mark.slow
def test_choice_steps_are_the_junctions(models):
    cfg, base, _, _ = models
    choice, other = choice_step_entropies(base, cfg.task, heldout_prompts(cfg), k=10, seed=3)
    assert min(choice) > 1.0, f"choice-step top-10 entropy should be ~ln 4, min {min(choice):.3f}"
    assert max(other) < 0.3, f"non-choice steps should be near-deterministic, max {max(other):.3f}"


@pytest.mark.slow
def test_value_model_beats_a_constant(models):
    cfg, base, vm, _ = models
    q = value_quality(vm, base, cfg.task, heldout_prompts(cfg), with_backend(cfg.make(seed=5, fast=True)))
    assert q["final_value_mse"] < q["constant_mse"], q
    assert q["choice_value_gap"] > 0 and q["choice_gap_positive"] > 0.8, q


@pytest.mark.slow
def test_outputs_and_table(demo):
    out, rows = demo
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0].keys()) == COLUMNS
    assert sorted({r["method"] for r in table}) == sorted(METHODS)
    sia = [r for r in table if r["method"] == "sia"]
    assert {(float(r["tau"]), r["entropy_scope"]) for r in sia} == {(t, s) for t in (0.5, 1.0, 1.5) for s in ("topk", "full")}
    assert (out / "pareto.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["cached"] is False

    # the scan backend that ran: one, available here, in every row, the summary and the table's header
    backend = summary["backend"]
    assert backend in available_backends("cpu") and summary["config"]["backend"] == backend
    assert {r["backend"] for r in table} == {backend}
    header = format_table(rows, with_backend(DemoConfig.make(seed=0, fast=True))).splitlines()[0]
    assert header.startswith(f"scan backend: {backend}, threads: 1,")

    base, dense = rows[0], rows[1]
    assert (base["method"], dense["method"]) == ("base", "dense_args")
    assert base["value_token_forwards"] == 0 and base["intervention_rate"] == 0
    assert dense["intervention_rate"] == 1.0
    sia1 = next(r for r in rows if r["method"] == "sia" and r["tau"] == 1.0 and r["entropy_scope"] == "topk")
    rand = next(r for r in rows if r["method"] == "random_gate")
    assert abs(sia1["intervention_rate"] - 1 / (DemoConfig().width + 1)) < 0.03  # one junction per segment
    assert sia1["value_token_forwards"] <= 0.25 * dense["value_token_forwards"]
    # the trained value model steers: loose bounds (48 prompts), the full demo reports the exact numbers
    assert dense["reward_mean"] > base["reward_mean"] + 0.1
    assert sia1["reward_mean"] > rand["reward_mean"]
    assert sia1["reward_mean"] >= 0.85 * dense["reward_mean"]
    for r in rows:
        assert r["base_token_forwards"] > 0 and r["wall_s"] > 0


@pytest.mark.slow
def test_cached_rerun_gives_the_same_table(demo, capsys):
    out, rows = demo
    again = run_demo(out, seed=0, fast=True)
    assert "models: reused" in capsys.readouterr().out
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]  # noqa: E731
    assert json.dumps(strip(again), sort_keys=True) == json.dumps(strip(rows), sort_keys=True)


def test_cache_key_covers_training_only():
    """Fast and full mode share the models; anything the models are trained with changes the key."""
    cfg = DemoConfig(backend="cpp")
    assert cfg.training_key() == replace(cfg, fast=True, heldout=48, beta=1.0, taus=(1.0,), n=2).training_key()
    for change in ({"seed": 1}, {"base_steps": 10}, {"value_epochs": 1}, {"threads": 2}, {"backend": "reference"}):
        assert replace(cfg, **change).training_key() != cfg.training_key(), change


def test_backend_fallback_is_shown_and_recorded(monkeypatch):
    """The automatic choice's fallback warning reaches the user, and the backend that will run is
    the one the demo records; a requested backend that cannot run is a one-line ValueError."""
    def falls_back(backend, device):
        warnings.warn("sia_kernels: backend 'cpp' is unavailable: test; falling back", RuntimeWarning)
        return "reference", None

    monkeypatch.setattr(demo_config, "resolve_backend", falls_back)
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert with_backend(DemoConfig()).backend == "reference"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--backend cuda"):
        with_backend(DemoConfig(backend="cuda"))  # the demo's tensors are on the CPU
    assert with_backend(DemoConfig(backend="reference")).backend == "reference"


def test_cli_args(tmp_path):
    p = argparse.ArgumentParser()
    add_demo_args(p)
    args = p.parse_args(["--out", str(tmp_path), "--seed", "3", "--fast", "--threads", "2", "--backend", "reference"])
    assert (args.out, args.seed, args.fast, args.threads, args.backend) == (str(tmp_path), 3, True, 2, "reference")
    d = p.parse_args([])
    assert (d.out, d.seed, d.fast, d.threads, d.backend, d.verbose) == ("demo_out", 0, False, DemoConfig.threads, "auto",
                                                                     False)
    with pytest.raises(ValueError, match="seed"):
        demo_main(argparse.Namespace(out=str(tmp_path), seed=-1, fast=True, threads=1, backend="auto", verbose=False))


def test_help_shows_defaults_and_what_fast_does(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    fast, full = DemoConfig.make(fast=True), DemoConfig.make()
    assert f"decode {fast.heldout} instead of {full.heldout} held-out prompts" in text
    assert fast.training_key() == full.training_key()  # "the models are the same"
    for default in ("(default: demo_out)", "(default: 0)", "(default: auto)", f"(default: {DemoConfig.threads})"):
        assert default in text, default
