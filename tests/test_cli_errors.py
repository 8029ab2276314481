"""A first run: bad inputs to `sia generate` / `sia train-value` are one line on stderr and exit
status 2, never a traceback or a Hub lookup; Ctrl-C and SIGTERM stop `sia generate` cleanly,
keeping the finished rows (or the old --out) and no temporary file; --help shows the defaults;
library progress bars and warnings stay hidden without --verbose.

Each bad input runs twice: in-process through `sia_kernels.cli.main` (fast) and as a real
`python -m sia_kernels.cli` process (slow: a process start imports torch, ~3 s here)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from .decoding.conftest import VOCAB, word_tokenizer
from sia_kernels import cli
from sia_kernels.runtime import check_model_arg, looks_like_path, threads_arg

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny base model (2k positions, so a run can be long enough to interrupt), a value-model
    directory name that does not exist, prompts, and training data."""
    d = tmp_path_factory.mktemp("first_run")
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048)
    AutoModelForCausalLM.from_config(config).save_pretrained(d / "base")
    word_tokenizer([f"w{i}" for i in range(3, VOCAB)]).save_pretrained(d / "base")
    (d / "in.jsonl").write_text("".join(json.dumps({"i": i, "prompt": f"w4 w{5 + i}"}) + "\n" for i in range(10)))
    (d / "bad.jsonl").write_text('{"prompt": "w4"}\n{"prompt": "w5",}\n')
    (d / "train.jsonl").write_text(json.dumps({"prompt": "w4", "response": "w5", "reward": 1.0}) + "\n")
    (d / "existing_model").mkdir()
    (d / "existing_model" / "value_config.json").write_text("{}")
    return d


def bad_inputs(d):
    """(argv, the text the one-line message must contain)."""
    gen = ["generate", "--prompts", str(d / "in.jsonl"), "--out", str(d / "never.jsonl"), "--gate", "never"]
    cases = [
        (gen + ["--model", str(d / "no_such_model")], f"--model {d / 'no_such_model'}: no such file or directory"),
        (gen + ["--model", "./no_such_model"], "--model ./no_such_model: no such file or directory"),
        (gen + ["--model", str(d / "base"), "--tokenizer", "~/no/such/tokenizer"], "--tokenizer ~/no/such/tokenizer"),
        (["generate", "--prompts", str(d / "in.jsonl"), "--out", str(d / "never.jsonl"), "--model", str(d / "base"),
          "--value-model", str(d / "no_value")], f"--value-model {d / 'no_value'}: no such file"),
        (gen[:2] + [str(d / "bad.jsonl")] + gen[3:] + ["--model", str(d / "base")], "bad.jsonl, line 2: invalid JSON"),
        (["train-value", "--backbone", str(d / "no_backbone"), "--data", str(d / "train.jsonl"), "--out",
          str(d / "vm")], "--backbone"),
        (["train-value", "--backbone", str(d / "base"), "--data", str(d / "train.jsonl"), "--out",
          str(d / "existing_model")], "exists; pass --overwrite"),
    ]
    if not CUDA:
        cases += [
            (gen + ["--model", str(d / "base"), "--device", "cuda"], "--device cuda:"),
            (gen + ["--model", str(d / "base"), "--backend", "triton"], "--backend triton needs a CUDA device"),
        ]
    return cases


CASE_IDS = ["abs-model", "rel-model", "tilde-tokenizer", "value-model", "jsonl", "backbone", "out-exists",
            "cuda", "triton"]


@pytest.mark.parametrize("case", range(9), ids=CASE_IDS)
def test_bad_input_is_one_line_in_process(files, case, capsys, monkeypatch):
    cases = bad_inputs(files)
    if case >= len(cases):
        pytest.skip("CUDA is available here")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # tests/conftest.py sets it; a user has not
    argv, text = cases[case]
    assert cli.main(argv + ["--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sia: error: ") and err.count("\n") == 1 and text in err, err
    assert not (files / "never.jsonl").exists() and not (files / "vm").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", range(9), ids=CASE_IDS)
def test_bad_input_is_one_line_in_a_process(files, case):
    cases = bad_inputs(files)
    if case >= len(cases):
        pytest.skip("CUDA is available here")
    argv, text = cases[case]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sia_kernels.cli", *argv, "--threads", "1"], capture_output=True,
                          text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("sia: error: ") and proc.stderr.count("\n") == 1 and text in proc.stderr, proc.stderr
    assert time.monotonic() - start < 30  # no Hub lookup (offline, that is a minute of retries)


def test_path_like_names_are_never_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("/abs/model", "./model", "../model", "~/model", "a/b/c", "models/base", "model/"):
        assert looks_like_path(name), name
        with pytest.raises(FileNotFoundError, match=f"--model {name}: no such file"):
            check_model_arg(name, "--model")
    for name in ("gpt2", "Qwen/Qwen3-0.6B"):  # Hub ids: left to transformers
        assert not looks_like_path(name) and check_model_arg(name, "--model") == name
    (tmp_path / "gpt2").mkdir()
    assert check_model_arg("gpt2", "--model") == "gpt2"  # a local directory wins
    assert check_model_arg(str(tmp_path / "models"), "--model") == str(tmp_path / "models")
    with pytest.raises(ValueError, match="--model"):
        check_model_arg(" ", "--model")
    assert threads_arg("3") == 3 and threads_arg("auto") >= 1
    with pytest.raises(Exception, match="auto"):
        threads_arg("0")


@pytest.mark.parametrize("command", ["generate", "train-value", "bench scan"])
def test_help_shows_the_defaults(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*command.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    want = {"generate": ["--k K", "(default: 10)", "(default: 128)", "(default: 1.0)", "(default: 8)",
                         "(default: auto)", "(default: cached)", "(default: topk)"],
            "train-value": ["(default: 16)", "(default: 0.0001)", "(default: sequence)", "(default: auto)"],
            "bench scan": ["(default: 151936)", "(default: 10)", "(default: auto)"]}[command]
    for text in want:
        assert text in out, (text, out)


def _generate(files, out, *extra, **popen):
    argv = [sys.executable, "-m", "sia_kernels.cli", "generate", "--model", str(files / "base"), "--gate", "never",
            "--prompts", str(files / "in.jsonl"), "--out", str(out), "--eos-token-id", "none", "--seed", "5",
            "--threads", "1", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


def _wait_for(predicate, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# Real processes and real signals (~5 s each): the full suite runs them, the fast subset does not.
@pytest.mark.slow
@pytest.mark.parametrize("sig,code,message", [
    (signal.SIGINT, 130, "sia: interrupted"),
    (signal.SIGTERM, 143, "sia: terminated (SIGTERM)"),
])
def test_a_signal_keeps_the_finished_rows_and_resume_finishes_them(files, tmp_path, sig, code, message, capsys):
    out = tmp_path / "out.jsonl"
    proc = _generate(files, out, "--batch-size", "2", "--max-new-tokens", "100", "--no-progress")
    partial = lambda: [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # noqa: E731
    _wait_for(lambda: any(p.stat().st_size for p in partial()), proc)  # the first batch is written
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and message in err and "--resume" in err, err
    assert "Loading weights" not in err and "Warning" not in err, err  # quiet without --verbose
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert 2 <= len(kept) < 10 and len(kept) % 2 == 0
    assert [r["i"] for r in kept] == list(range(len(kept))) and all(r["sia"]["tokens"] == 100 for r in kept)
    # --resume (in-process: fast) gives the rows of an uninterrupted run
    common = ["generate", "--model", str(files / "base"), "--gate", "never", "--prompts", str(files / "in.jsonl"),
              "--eos-token-id", "none", "--seed", "5", "--threads", "1", "--batch-size", "2", "--max-new-tokens",
              "100", "--no-progress"]
    assert cli.main(common + ["--out", str(out), "--resume"]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "full.jsonl")]) == 0
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    capsys.readouterr()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_a_batch_is_written_keeps_the_whole_batch(files, tmp_path, monkeypatch, sig, code, capsys):
    """The signal arrives right after a batch's first row is written (in-process, so exactly there):
    the batch's second row is finished too and must not be lost."""
    from sia_kernels.jsonl import JsonlWriter

    write = JsonlWriter.write

    def write_then_signal(self, row):
        write(self, row)
        if self.rows == 3:  # the first row of the second batch
            signal.raise_signal(sig)

    monkeypatch.setattr(JsonlWriter, "write", write_then_signal)
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--model", str(files / "base"), "--gate", "never", "--prompts", str(files / "in.jsonl"),
            "--out", str(out), "--eos-token-id", "none", "--threads", "1", "--batch-size", "2",
            "--max-new-tokens", "3", "--no-progress"]
    assert cli.main(argv) == code
    assert [json.loads(line)["i"] for line in out.read_text().splitlines()] == [0, 1, 2, 3]
    assert "4 of 10 rows" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are put back


def test_signals_held_raises_a_held_signal_after_the_block_with_the_old_handler():
    from sia_kernels.runtime import Terminated, restore_sigterm, signals_held, stop_on_sigterm

    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            signal.raise_signal(signal.SIGINT)
            done.append("after the signal")
    assert done == ["after the signal"]
    previous = stop_on_sigterm()
    try:
        with pytest.raises(Terminated):
            with signals_held():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGINT)  # the first one held wins
                done.append("both held")
        assert done[-1] == "both held"
        with signals_held():  # nothing arrives: nothing is raised
            pass
    finally:
        restore_sigterm(previous)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_a_signal_before_the_first_row_leaves_the_old_out_intact(files, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"old": true}\n')
    proc = _generate(files, out, "--overwrite", "--batch-size", "10", "--max-new-tokens", "2000")
    partial = lambda: [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # noqa: E731
    _wait_for(lambda: partial(), proc)  # decoding has started; the one batch takes seconds
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err and "terminated" in err, err
    assert out.read_text() == '{"old": true}\n' and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
