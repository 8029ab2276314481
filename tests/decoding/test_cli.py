"""`sia generate` (add_generate_args / generate_main) and the profiling helpers."""
import argparse
import importlib
import json
import os
import stat

import pytest
import torch

from .conftest import VOCAB, base_model, value_model, word_tokenizer
from sia_kernels.decoding import cli, profiling


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    model = base_model("qwen3")
    model.config.eos_token_id = 2
    try:
        model.save_pretrained(d / "base")
    finally:
        model.config.eos_token_id = None
    word_tokenizer([f"w{i}" for i in range(3, VOCAB)]).save_pretrained(d / "base")
    value_model("qwen3").save_pretrained(d / "value", save_backbone=True)
    return d


def run(argv):
    p = argparse.ArgumentParser()
    cli.add_generate_args(p)
    return cli.generate_main(p.parse_args(argv))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_generate_writes_rows_with_input_fields_and_stats(checkpoint, tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": i, "prompt": " ".join(f"w{3 + (i * 7 + j) % 90}" for j in range(1 + i)), "meta": [i]} for i in range(5)]
    write_jsonl(src, rows)
    before = src.read_bytes()
    argv = ["--model", str(checkpoint / "base"), "--value-model", str(checkpoint / "value"), "--prompts", str(src),
            "--out", str(out), "--batch-size", "2", "--max-new-tokens", "6", "--greedy", "--gate", "always",
            "--k", "4", "--no-progress"]
    assert run(argv) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 5 and src.read_bytes() == before
    for r, g in zip(rows, got):
        assert {k: g[k] for k in r} == r
        assert isinstance(g["generation"], str)
        s = g["sia"]
        assert 1 <= s["tokens"] <= 6 and s["junctions"] == s["tokens"] and s["intervention_rate"] == 1.0
        assert s["value_token_forwards"] > 0
    err = capsys.readouterr().err
    assert "intervention rate" in err and "value token-forwards" in err and "tokens / s" in err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    # An existing output is not replaced without --overwrite; the input is never the output.
    with pytest.raises(ValueError, match="--overwrite"):
        run(argv)
    with pytest.raises(ValueError, match="input file"):
        run([str(src) if a == str(out) else a for a in argv] + ["--overwrite"])
    assert src.read_bytes() == before


@pytest.mark.parametrize("text,msg", [
    ('{"prompt": "w4"}\n\n{"prompt": "w5"\n', "line 3: invalid JSON"),
    ('{"prompt": "w4"}\n{"text": "w5"}\n', "line 2: field 'prompt' is missing"),
    ('{"prompt": 5}\n', "line 1: field 'prompt' is a int"),
    ('{"prompt": "  "}\n', "line 1: field 'prompt' is an empty prompt"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    ('\n\n', "no rows"),
    (b'{"prompt": "w4"}\n{"prompt": "\xff"}\n', "line 2: not UTF-8"),
])
def test_malformed_jsonl_names_the_line(tmp_path, text, msg):
    src = tmp_path / "in.jsonl"
    src.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=msg):
        cli.read_prompts(src)


def test_interrupt_keeps_finished_rows_and_resume_equals_an_uninterrupted_run(checkpoint, tmp_path, monkeypatch):
    src, out, full = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "full.jsonl"
    write_jsonl(src, [{"i": i, "prompt": f"w4 w{5 + i}"} for i in range(5)])
    argv = ["--model", str(checkpoint / "base"), "--value-model", str(checkpoint / "value"), "--prompts", str(src),
            "--batch-size", "2", "--max-new-tokens", "4", "--k", "4", "--tau", "0.5", "--seed", "3", "--no-progress"]
    assert run(argv + ["--out", str(full)]) == 0  # sampled (temperature 1): the seeds matter
    gen_mod = importlib.import_module("sia_kernels.decoding.generate")  # the module, not the function
    real, calls = gen_mod.generate, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(gen_mod, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(argv + ["--out", str(out)])
    # the first batch is kept, complete; no temporary file is left
    assert out.read_text().splitlines() == full.read_text().splitlines()[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.jsonl", "in.jsonl", "out.jsonl"]
    monkeypatch.setattr(gen_mod, "generate", real)
    with pytest.raises(ValueError, match="--resume"):
        run(argv + ["--out", str(out)])  # neither --overwrite nor --resume
    with pytest.raises(ValueError, match="--batch-size"):
        run(argv + ["--out", str(out), "--resume", "--batch-size", "3"])
    assert run(argv + ["--out", str(out), "--resume"]) == 0
    assert out.read_bytes() == full.read_bytes()
    assert run(argv + ["--out", str(out), "--resume"]) == 0  # complete already: nothing to do
    assert out.read_bytes() == full.read_bytes()
    # --resume refuses a file that is not this input's generation
    write_jsonl(src, [{"i": i, "prompt": f"w6 w{5 + i}"} for i in range(5)])
    with pytest.raises(ValueError, match="row 1 of --out"):
        run(argv + ["--out", str(out), "--resume"])


def test_output_honours_the_umask(checkpoint, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, [{"prompt": "w4"}])
    old = os.umask(0o027)
    try:
        run(["--model", str(checkpoint / "base"), "--gate", "never", "--prompts", str(src), "--out", str(out),
             "--max-new-tokens", "2", "--no-progress"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_cli_argument_errors(checkpoint, tmp_path):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [{"prompt": "w4"}])
    base = ["--model", str(checkpoint / "base"), "--prompts", str(src), "--out", str(tmp_path / "o.jsonl")]
    with pytest.raises(ValueError, match="--value-model is required"):
        run(base + ["--no-progress"])
    with pytest.raises(ValueError, match=r"SIAConfig\.rate"):
        run(base + ["--gate", "random"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        run(["--model", "x", "--prompts", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    p = argparse.ArgumentParser()
    cli.add_generate_args(p)
    a = p.parse_args(base + ["--eos-token-id", "none", "--tau", "inf"])
    assert cli.build_config(a).eos_token_id is None and cli.build_config(a).tau == float("inf")
    assert cli.build_config(p.parse_args(base + ["--eos-token-id", "3,4"])).eos_token_id == (3, 4)


def test_profiling_helpers(tmp_path):
    times = {}
    with profiling.phase("scan", times):
        torch.ones(3).sum()
    assert times["scan"] >= 0
    assert profiling.set_nvtx(True) is torch.cuda.is_available()  # a no-op without CUDA
    with profiling.phase("value", times):
        pass
    profiling.set_nvtx(False)
    with profiling.profile_trace(tmp_path / "trace"):
        with profiling.phase("steer", times):
            torch.ones(3).sum()
    trace = (tmp_path / "trace" / "trace.json").read_text()
    assert "sia::steer" in trace
