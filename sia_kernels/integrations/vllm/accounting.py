"""Per-request SIA accounting: :class:`RequestStats`, and :class:`RequestRow`, the processor's record
of a SIA request in vLLM's persistent batch."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .options import RequestOptions


@dataclass
class RequestStats:
    """SIA accounting of one request. ``steps``: decode steps that went through SIA; ``junctions``:
    steps steered by the value model; ``value_token_forwards``: value-model token-forwards spent
    (prefix + k candidates per junction, prefix mode); ``output_tokens``: tokens generated when read."""

    id: object
    prompt_tokens: int
    output_tokens: int = 0
    steps: int = 0
    junctions: int = 0
    value_token_forwards: int = 0
    finished: bool = False

    @property
    def intervention_rate(self) -> float:
        return self.junctions / self.steps if self.steps else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "intervention_rate": self.intervention_rate}


class RequestRow:
    """A SIA request in the persistent batch: its options, live token lists and accounting."""

    def __init__(self, options: RequestOptions, prompt: list[int], output: list[int]):
        self.config = options.config
        self.prompt = prompt
        self.output = output  # vLLM's live list of the request's generated tokens
        self.stats = RequestStats(id=options.id, prompt_tokens=len(prompt))

    def close(self) -> RequestStats:
        self.stats.output_tokens = len(self.output)
        self.stats.finished = True
        return self.stats
