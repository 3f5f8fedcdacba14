"""Generation settings a chat user may change (``/set NAME VALUE`` in the terminal, the sliders on the web page).

Each setting has a type and a valid range; a bad value is a :class:`ConfigError` naming the setting, the range and the
value given, and leaves the settings as they were.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from vlmkit.errors import ConfigError


@dataclass(frozen=True)
class Limit:
    kind: type
    low: float
    high: float
    low_inclusive: bool = True
    meaning: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        return f"{kind} in {'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}]"


#: name → what it may be. ``temperature`` 0 means greedy (or beam search); beams need temperature 0 to be searched.
LIMITS: dict[str, Limit] = {
    "temperature": Limit(float, 0.0, 5.0, meaning="0 = greedy / beam search, > 0 = sampling"),
    "top_p": Limit(float, 0.0, 1.0, low_inclusive=False, meaning="nucleus of the sampling distribution"),
    "num_beams": Limit(int, 1, 8, meaning="beam search width (1 = no beam search); replies then appear at once"),
    "max_new_tokens": Limit(int, 1, 1024, meaning="longest reply, in tokens"),
}


def _convert(name: str, value: Any) -> float | int:
    limit = LIMITS[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {limit.describe()}, got {value!r}") from None
    if limit.kind is int:
        if not math.isfinite(number) or number != int(number):
            raise ConfigError(f"{name} must be {limit.describe()}, got {value!r}")
        number = int(number)
    too_low = number < limit.low or (number == limit.low and not limit.low_inclusive)
    if not math.isfinite(number) or too_low or number > limit.high:
        raise ConfigError(f"{name} must be {limit.describe()}, got {value!r}")
    return number


@dataclass(frozen=True)
class GenerationSettings:
    """What every reply is generated with; ``with_value`` returns a checked copy."""

    temperature: float = 0.0
    top_p: float = 1.0
    num_beams: int = 1
    max_new_tokens: int = 64

    @classmethod
    def from_run(cls, generate_cfg: Mapping[str, Any] | None) -> "GenerationSettings":
        """Start from the run's ``run.generate`` (the settings it was evaluated with), one beam unless it says more."""
        settings = cls()
        for f in fields(cls):
            if generate_cfg and generate_cfg.get(f.name) is not None:
                settings = settings.with_value(f.name, generate_cfg[f.name])
        return settings

    def with_value(self, name: str, value: Any) -> "GenerationSettings":
        if name not in LIMITS:
            raise ConfigError(f"unknown setting '{name}'; settings: {', '.join(LIMITS)}")
        return replace(self, **{name: _convert(name, value)})

    def streams(self) -> bool:
        """Token-by-token output works for one beam (transformers' streamers take one sequence)."""
        return self.num_beams == 1

    def generate_kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "num_beams": self.num_beams}

    def describe(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))
