"""The branching grammar: its reward reads the finished text, its data is balanced, its tokenizer round-trips."""
import pytest

from sia_kernels.tasks import BranchingTask


@pytest.fixture(scope="module")
def task():
    return BranchingTask()


def segment(task, c):
    return [task.choice_ids[c], *task.continuation_ids(c)]


def prompt(task, topic):
    return [task.bos_id, task.vocab["f1"], task.topic_ids[topic], task.sep_id]


def test_reward_counts_aligned_segments(task):
    p = prompt(task, 0)  # topic_a: C0, C1 aligned
    resp = segment(task, 0) + segment(task, 2) + segment(task, 1) + segment(task, 3) + [task.eos_id]
    assert task.is_well_formed(resp)
    assert task.reward(p, resp) == 0.5
    assert task.reward(prompt(task, 1), resp) == 0.5
    all_a = [t for c in (0, 1, 1, 0) for t in segment(task, c)] + [task.eos_id]
    assert task.reward(p, all_a) == 1.0 and task.reward(prompt(task, 1), all_a) == 0.0


def test_reward_reads_the_continuation(task):
    """An aligned choice whose continuation is another choice's words is malformed: misaligned."""
    p = prompt(task, 0)
    wrong = [task.choice_ids[0], *task.continuation_ids(1)]
    resp = wrong + segment(task, 0) * 3 + [task.eos_id]
    assert task.reward(p, resp) == 0.75 and not task.is_well_formed(resp)
    short = segment(task, 0)[:-1] + segment(task, 0) * 3 + [task.eos_id]  # shifts every later chunk
    assert task.reward(p, short) < 0.5


def test_reward_missing_and_extra_segments(task):
    p = prompt(task, 1)
    assert task.reward(p, segment(task, 2) + [task.eos_id]) == 0.25  # missing segments count as misaligned
    assert task.reward(p, segment(task, 2) * 5 + [task.eos_id]) == 1.0  # 5 of 5
    assert task.reward(p, segment(task, 2) * 4 + segment(task, 0) + [task.eos_id]) == 0.8  # 4 of 5
    assert task.reward(p, segment(task, 2) * 4) == 1.0  # no EOS: the text is still read
    assert task.reward(p, []) == 0.0
    assert task.reward([task.bos_id, task.sep_id], segment(task, 2) * 4) == 0.0  # no topic


def test_training_data_is_balanced(task):
    train, held = task.split_prompts(256, seed=0)
    assert not {tuple(p) for p in train} & {tuple(p) for p in held}
    assert sum(task.topic_of(p) for p in held) == 128
    data = task.sample_sequences(2000, train, seed=0)
    rewards = [task.reward(p, r) for p, r in data]
    assert all(task.is_well_formed(r) for _, r in data)
    assert abs(sum(rewards) / len(rewards) - 0.5) < 0.02  # aligned and misaligned equally often


def test_tokenizer_round_trip(task):
    tok = task.tokenizer()
    p, r = task.sample_sequences(1, task.all_prompts(), seed=1)[0]
    text = tok.decode(p[1:], skip_special_tokens=False)
    assert tok(text)["input_ids"] == p  # [BOS] is added
    assert tok(tok.decode(r, skip_special_tokens=False), add_special_tokens=False)["input_ids"] == r
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (task.pad_id, task.bos_id, task.eos_id)
    assert len(tok) == task.vocab_size


def test_bad_sizes():
    with pytest.raises(ValueError, match="width"):
        BranchingTask(width=0)
    with pytest.raises(ValueError, match="num_heldout"):
        BranchingTask().split_prompts(1)
