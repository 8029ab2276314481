"""A branching grammar: near-deterministic text with a few genuine choices whose consequences show later.

Prompt: ``[BOS] context [SEP]``. The context is 1–3 irrelevant filler words with one topic word
(``topic_a`` or ``topic_b``) at a random place among them, so a value model has to read the
context to know the topic. Response: ``segments`` segments, then ``[EOS]``. A segment is one choice
word (``C0``–``C3``, uniform in the training data, independent of the topic: aligned and misaligned
choices equally often) followed by that choice's fixed ``width``-word continuation
(``c2w0 c2w1 …``). So the base model's next-token distribution has ~4 equally likely tokens at each
choice step (top-k entropy ≈ ln 4 ≈ 1.39 nats) and one near-certain token everywhere else.

Alignment: choices ``C0``, ``C1`` are aligned under ``topic_a``; ``C2``, ``C3`` under ``topic_b``.
The trajectory reward is the share of aligned segments, read from the finished text: each
``width + 1``-token chunk of the response must be a choice followed by *its* continuation words
(so the consequence of a choice is in the words that follow it); a malformed chunk counts as
misaligned, and more chunks than ``segments`` only enlarge the denominator.

Everything is built offline: the tokenizer is a ``PreTrainedTokenizerFast`` over a WordLevel
``tokenizers`` model (``[BOS]`` added to every encoded text, like a Hugging Face chat model's),
so texts work as prompts for :func:`sia_kernels.decoding.generate` and ``sia generate``.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

__all__ = ["BranchingTask", "SPECIALS"]

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]")
TOPICS = ("topic_a", "topic_b")
NUM_CHOICES = 4
ALIGNED = {0: (0, 1), 1: (2, 3)}  # topic index -> aligned choice indices


@dataclass(frozen=True)
class BranchingTask:
    """The grammar's sizes. ``segments``: choices per response; ``width``: continuation words per
    choice; ``fillers``: distinct filler words; ``max_fillers``: filler words per prompt (1 to this)."""

    segments: int = 4
    width: int = 6
    fillers: int = 6
    max_fillers: int = 3
    vocab: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        for name in ("segments", "width", "fillers", "max_fillers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"BranchingTask.{name} must be an int >= 1, got {v!r}")
        words = [*SPECIALS, *TOPICS, *self.filler_words, *self.choice_words,
                 *(w for c in range(NUM_CHOICES) for w in self.continuation_words(c))]
        object.__setattr__(self, "vocab", {w: i for i, w in enumerate(words)})

    # ---------------------------------------------------------------- words and ids
    @property
    def filler_words(self) -> list[str]:
        return [f"f{i}" for i in range(self.fillers)]

    @property
    def choice_words(self) -> list[str]:
        return [f"C{i}" for i in range(NUM_CHOICES)]

    def continuation_words(self, choice: int) -> list[str]:
        return [f"c{choice}w{j}" for j in range(self.width)]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.vocab["[PAD]"]

    @property
    def bos_id(self) -> int:
        return self.vocab["[BOS]"]

    @property
    def eos_id(self) -> int:
        return self.vocab["[EOS]"]

    @property
    def sep_id(self) -> int:
        return self.vocab["[SEP]"]

    @property
    def topic_ids(self) -> list[int]:
        return [self.vocab[t] for t in TOPICS]

    @property
    def choice_ids(self) -> list[int]:
        return [self.vocab[c] for c in self.choice_words]

    def continuation_ids(self, choice: int) -> list[int]:
        return [self.vocab[w] for w in self.continuation_words(choice)]

    @property
    def response_length(self) -> int:
        """Tokens of a well-formed response, EOS included."""
        return self.segments * (self.width + 1) + 1

    def choice_steps(self) -> list[int]:
        """Response positions (0 = first generated token) where a well-formed response makes a choice."""
        return [s * (self.width + 1) for s in range(self.segments)]

    def tokenizer(self):
        """A ``PreTrainedTokenizerFast`` for this vocabulary (whitespace-separated words; ``[BOS]``
        is prepended to every encoded text unless ``add_special_tokens=False``)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(dict(self.vocab), unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", self.bos_id)])
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
            sep_token="[SEP]", padding_side="left",
        )

    # ---------------------------------------------------------------- sampling
    def all_prompts(self) -> list[tuple[int, ...]]:
        """Every prompt the grammar allows, in a fixed order: ``(BOS, *context, SEP)``."""
        out = []
        fill = [self.vocab[w] for w in self.filler_words]
        for m in range(1, self.max_fillers + 1):
            for topic in self.topic_ids:
                for words in itertools.product(fill, repeat=m):
                    for at in range(m + 1):
                        ctx = list(words[:at]) + [topic] + list(words[at:])
                        out.append((self.bos_id, *ctx, self.sep_id))
        return out

    def split_prompts(self, num_heldout: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
        """``(train, heldout)``: a seeded split of :meth:`all_prompts`; held-out prompts are never
        used for training data, and hold both topics equally often (``num_heldout`` even)."""
        prompts = self.all_prompts()
        rng = random.Random(f"split-{seed}")
        rng.shuffle(prompts)
        per_topic = {t: [p for p in prompts if self.topic_of(p) == i] for i, t in enumerate(self.topic_ids)}
        half = num_heldout // 2
        if half < 1 or any(len(v) <= half for v in per_topic.values()):
            raise ValueError(f"num_heldout must be an even number in [2, {2 * (min(map(len, per_topic.values())) - 1)}]")
        held = [p for v in per_topic.values() for p in v[:half]]
        rng.shuffle(held)
        held_set = set(held)
        train = [list(p) for p in prompts if p not in held_set]
        return train, [list(p) for p in held]

    def sample_response(self, rng: random.Random) -> list[int]:
        """A well-formed response: each segment's choice uniform over the 4 (aligned or not), EOS."""
        out = []
        for _ in range(self.segments):
            c = rng.randrange(NUM_CHOICES)
            out += [self.choice_ids[c], *self.continuation_ids(c)]
        return out + [self.eos_id]

    def sample_sequences(self, n: int, prompts: list[list[int]], seed: int = 0) -> list[tuple[list[int], list[int]]]:
        """``n`` training sequences ``(prompt, response)``: prompts drawn uniformly from ``prompts``."""
        rng = random.Random(f"seqs-{seed}")
        return [(list(rng.choice(prompts)), self.sample_response(rng)) for _ in range(n)]

    # ---------------------------------------------------------------- reward
    def topic_of(self, prompt_ids) -> int | None:
        """The topic index named in the prompt (the first topic word), or None."""
        for t in prompt_ids:
            if t in self.topic_ids:
                return self.topic_ids.index(t)
        return None

    def segment_alignment(self, prompt_ids, response_ids) -> list[bool]:
        """Per ``width + 1``-token chunk of the response (cut at the first EOS, padded to
        ``segments`` chunks): aligned or not. A chunk is aligned when it is a choice word that is
        aligned for the prompt's topic, followed by exactly that choice's continuation words."""
        topic = self.topic_of(prompt_ids)
        resp = list(response_ids)
        if self.eos_id in resp:
            resp = resp[:resp.index(self.eos_id)]
        w = self.width + 1
        chunks = [resp[i:i + w] for i in range(0, len(resp), w)]
        out = []
        for ch in chunks:
            ok = False
            if topic is not None and len(ch) == w and ch[0] in self.choice_ids:
                c = self.choice_ids.index(ch[0])
                ok = c in ALIGNED[topic] and ch[1:] == self.continuation_ids(c)
            out.append(ok)
        return out + [False] * (self.segments - len(out))

    def reward(self, prompt_ids, response_ids) -> float:
        """Share of aligned segments in [0, 1] (see :meth:`segment_alignment`)."""
        seg = self.segment_alignment(prompt_ids, response_ids)
        return sum(seg) / len(seg)

    def is_well_formed(self, response_ids) -> bool:
        """``segments`` chunks of a choice and its own continuation, then EOS."""
        resp = list(response_ids)
        if len(resp) != self.response_length or resp[-1] != self.eos_id:
            return False
        w = self.width + 1
        for i in range(0, len(resp) - 1, w):
            ch = resp[i:i + w]
            if ch[0] not in self.choice_ids or ch[1:] != self.continuation_ids(self.choice_ids.index(ch[0])):
                return False
        return True
