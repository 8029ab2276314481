"""Training (the paper's loss, LoRA via peft), checkpoint round trips, the release layout, the CLI hook."""
import argparse
import json
import os
import random
import stat

import pytest
import torch

from .conftest import VOCAB, tiny_causal_lm, word_tokenizer
from sia_kernels.value import ValueModel, ValueTrainConfig, add_train_value_args, train_value, train_value_main
from sia_kernels.value.train import load_rows

MARK = 7  # reward = share of token t7 in the response


def synthetic_rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(f"t{rng.randrange(10, 40)}" for _ in range(3))
        m = rng.randrange(0, 9)
        resp = [MARK] * m + [rng.randrange(10, 20) for _ in range(8 - m)]
        rng.shuffle(resp)
        rows.append({"prompt": prompt, "response": " ".join(f"t{x}" for x in resp), "reward": m / 8})
    return rows


FAST = dict(lr=3e-3, batch_size=16, val_fraction=0.2, lora_r=8, lora_dropout=0.0, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    tok = word_tokenizer([f"t{i}" for i in range(2, VOCAB)])
    vm, metrics = train_value(tiny_causal_lm("qwen3"), synthetic_rows(200), out_dir=out,
                              config=ValueTrainConfig(epochs=5, **FAST), tokenizer=tok)
    return vm, metrics, out


def test_training_halves_held_out_loss_and_ranks_the_marked_token_first(trained):
    vm, metrics, _ = trained
    assert metrics["num_val"] == 40 and metrics["num_train"] == 160
    assert metrics["val_loss"] <= 0.5 * metrics["val_loss_initial"]
    rng = random.Random(1)
    prefixes = [[rng.randrange(10, 40) for _ in range(3)] + [rng.choice([MARK, rng.randrange(10, 20)])
                                                              for _ in range(rng.randrange(0, 7))] for _ in range(16)]
    from sia_kernels.value.padding import pad_left

    ids, mask = pad_left(prefixes, 0)
    cand = torch.tensor([[12, MARK, 15, 18]] * len(prefixes))
    scores = vm.score_candidates(ids, mask, cand)
    assert (scores.argmax(-1) == 1).all()


def test_saved_model_loads_back_and_scores_identically(trained):
    vm, _, out = trained
    assert {"value_config.json", "head.safetensors", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "backbone" / "model.safetensors").exists()
    loaded = ValueModel.from_pretrained(out, attn_implementation="eager")  # trained with eager
    assert loaded.tokenizer is not None and loaded.tokenizer.get_vocab() == vm.tokenizer.get_vocab()
    ids = torch.randint(0, VOCAB, (3, 9))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :4] = False
    cand = torch.randint(0, VOCAB, (3, 5))
    torch.testing.assert_close(loaded.score_candidates(ids, mask, cand), vm.score_candidates(ids, mask, cand),
                               atol=0, rtol=0)
    sdpa = ValueModel.from_pretrained(out)
    torch.testing.assert_close(sdpa.score_candidates(ids, mask, cand), vm.score_candidates(ids, mask, cand),
                               atol=1e-5, rtol=0)
    # explicit backbone: the same base weights rebuilt from the same seed
    again = ValueModel.from_pretrained(out, backbone=tiny_causal_lm("qwen3"))
    torch.testing.assert_close(again.score_candidates(ids, mask, cand), vm.score_candidates(ids, mask, cand),
                               atol=0, rtol=0)


def test_training_is_repeatable_with_a_seed():
    tok = word_tokenizer([f"t{i}" for i in range(2, VOCAB)])
    cfg = ValueTrainConfig(epochs=1, **{**FAST, "lora_dropout": 0.1})
    runs = [train_value(tiny_causal_lm("gpt2"), synthetic_rows(40), config=cfg, tokenizer=tok) for _ in range(2)]
    assert runs[0][1]["history"] == runs[1][1]["history"]
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)
    other = train_value(tiny_causal_lm("gpt2"), synthetic_rows(40), tokenizer=tok,
                        config=ValueTrainConfig(epochs=1, **{**FAST, "seed": 1}))
    assert other[1]["history"] != runs[0][1]["history"]


def test_malformed_rows_name_their_line(tmp_path):
    good = json.dumps({"prompt": "t2", "response": "t3", "reward": 1.0})
    cases = {
        "{not json": "line 3: invalid JSON",
        json.dumps({"prompt": "t2", "response": "t3"}): "line 3: 'reward' must be a finite number",
        json.dumps({"prompt": 5, "response": "t3", "reward": 0}): "line 3: 'prompt' must be a string",
        json.dumps([1, 2]): "line 3: expected a JSON object",
    }
    for bad, message in cases.items():
        path = tmp_path / "data.jsonl"
        path.write_text("\n".join([good, good, bad, good]) + "\n")
        with pytest.raises(ValueError, match=message):
            load_rows(path)
    with pytest.raises(ValueError, match="data row 2"):
        load_rows([{"prompt": "a", "response": "b", "reward": 0}, {"prompt": "a", "reward": 0}])
    with pytest.raises(ValueError, match="lr"):
        ValueTrainConfig(lr=0)
    with pytest.raises(ValueError, match="val_fraction"):
        ValueTrainConfig(val_fraction=1.0)


def test_cli_hook_trains_saves_and_loads(tmp_path, monkeypatch):
    backbone_dir = tmp_path / "backbone"
    tiny_causal_lm("llama").save_pretrained(backbone_dir)
    word_tokenizer([f"t{i}" for i in range(2, VOCAB)]).save_pretrained(backbone_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(24)))
    parser = argparse.ArgumentParser()
    add_train_value_args(parser)
    monkeypatch.chdir(tmp_path)  # a relative --backbone is stored as an absolute path
    argv = ["--backbone", "backbone", "--data", "train.jsonl", "--out", "out", "--lr", "1e-3", "--epochs", "1",
            "--batch-size", "8", "--lora-r", "4", "--target-modules", "q_proj", "v_proj", "--no-progress"]
    old_umask = os.umask(0o022)
    try:
        assert train_value_main(parser.parse_args(argv)) == 0
    finally:
        os.umask(old_umask)
    out = tmp_path / "out"
    config = json.loads((out / "value_config.json").read_text())
    assert config["backbone"] == str(backbone_dir.resolve()) and not config["has_backbone_weights"]  # a reference
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in out.rglob("*") if p.is_file())  # not 0600
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    monkeypatch.chdir(tmp_path.parent)
    vm = ValueModel.from_pretrained(out)
    ids = torch.randint(0, VOCAB, (2, 6))
    assert vm.score_candidates(ids, torch.ones_like(ids, dtype=torch.bool), ids[:, :3]).shape == (2, 3)
    # an existing model directory is replaced only with --overwrite, and then completely
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--overwrite"):
        train_value_main(parser.parse_args(argv))
    (out / "stale.txt").write_text("from an older model")
    assert train_value_main(parser.parse_args(argv + ["--overwrite", "--lora-r", "2"])) == 0
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 2
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone", "out", "train.jsonl"]  # no temporary dirs


def _make_release(tmp_path, family):
    """Write the authors' layout by hand; return (directory, the equivalent in-memory ValueModel)."""
    from peft import LoraConfig, get_peft_model

    targets = ["c_attn"] if family == "gpt2" else ["q_proj", "v_proj"]
    torch.manual_seed(3)
    peft_model = get_peft_model(tiny_causal_lm(family), LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, fan_in_fan_out=family == "gpt2"))
    head = torch.nn.Linear(32, 1)
    directory = tmp_path / f"release-{family}"
    directory.mkdir()
    (directory / "model_config.json").write_text(json.dumps({"model_type": family, "hidden_size": 32}))
    peft_model.save_pretrained(directory / "lora_weights")
    torch.save({"token_reward_head": head.state_dict()}, directory / "token_reward_head.pt")
    return directory, ValueModel(peft_model, head).eval()


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_release_layout_round_trip(tmp_path, family):
    directory, reference = _make_release(tmp_path, family)
    loaded = ValueModel.from_sia_release(tiny_causal_lm(family), directory)
    ids = torch.randint(0, VOCAB, (2, 7))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :3] = False
    with torch.no_grad():
        torch.testing.assert_close(loaded.values(ids, mask)[mask], reference.values(ids, mask)[mask], atol=0, rtol=0)
    # and from a backbone path; then through this package's own format
    backbone_dir = tmp_path / "bb"
    tiny_causal_lm(family).save_pretrained(backbone_dir)
    from_path = ValueModel.from_sia_release(str(backbone_dir), directory, attn_implementation="eager")
    from_path.save_pretrained(tmp_path / "ours")
    reloaded = ValueModel.from_pretrained(tmp_path / "ours", attn_implementation="eager")
    cand = torch.randint(0, VOCAB, (2, 4))
    want = reference.score_candidates(ids, mask, cand)
    torch.testing.assert_close(reloaded.score_candidates(ids, mask, cand), want, atol=0, rtol=0)


def test_missing_checkpoint_files_are_listed(tmp_path):
    directory, _ = _make_release(tmp_path, "llama")
    (directory / "token_reward_head.pt").unlink()
    (directory / "model_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="model_config.json, token_reward_head.pt"):
        ValueModel.from_sia_release(tiny_causal_lm("llama"), directory)
    with pytest.raises(FileNotFoundError, match="value_config.json, head.safetensors"):
        ValueModel.from_pretrained(tmp_path / "nothing-here")


def test_plain_and_reward_model_round_trips(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from .conftest import tiny_config

    plain = ValueModel(tiny_causal_lm("gpt2")).eval()
    torch.manual_seed(0)
    rm = ValueModel.from_reward_model(AutoModelForSequenceClassification.from_config(
        tiny_config("qwen3", num_labels=1, pad_token_id=0)))
    ids = torch.randint(1, VOCAB, (2, 5))
    for i, vm in enumerate([plain, rm]):
        vm.save_pretrained(tmp_path / str(i))
        loaded = ValueModel.from_pretrained(tmp_path / str(i), attn_implementation=vm.config._attn_implementation)
        assert type(loaded.backbone) is type(vm.backbone)
        with torch.no_grad():
            torch.testing.assert_close(loaded.values(ids), vm.values(ids), atol=0, rtol=0)


def test_token_loss_trains_every_position():
    tok = word_tokenizer([f"t{i}" for i in range(2, VOCAB)])
    vm, metrics = train_value(tiny_causal_lm("llama"), synthetic_rows(200), tokenizer=tok,
                              config=ValueTrainConfig(epochs=5, loss="token", **FAST))
    assert metrics["config"]["loss"] == "token"
    assert metrics["val_loss"] <= 0.5 * metrics["val_loss_initial"]
    with pytest.raises(ValueError, match="loss must be one of"):
        ValueTrainConfig(loss="hinge")


def test_a_reward_models_own_score_head_is_trained():
    from transformers import AutoModelForSequenceClassification

    from .conftest import tiny_config

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(tiny_config("qwen3", num_labels=1, pad_token_id=0))
    before = rm.score.weight.detach().clone()
    tok = word_tokenizer([f"t{i}" for i in range(2, VOCAB)])
    vm, _ = train_value(rm, synthetic_rows(40), tokenizer=tok, config=ValueTrainConfig(epochs=1, **FAST))
    assert vm.head.weight.requires_grad
    assert not torch.equal(vm.head.weight.detach(), before), "peft froze the score head: it never trained"
