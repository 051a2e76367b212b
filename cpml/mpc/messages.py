"""The messages the baselines exchange, and a counter of messages and bytes per phase and kind."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

MASTER = -1  # the sender/receiver index of the master; workers are 0..N-1


class Kind(enum.Enum):
    """What a message carries."""

    DATA = "data"  # master -> party: rows of the party's Shamir share of its group's data (step = row offset)
    WEIGHTS = "weights"  # master -> party: the party's share of the round's quantized weights
    DOUBLE = "double"  # party -> party, BH08 offline: shares [s]_T and [s]_2T of the sender's random batch
    RESHARE = "reshare"  # party -> party, BGW: a degree-T share of the sender's degree-2T product share
    MASKED = "masked"  # party -> king, BH08: the product share plus [rho]_2T
    OPENED = "opened"  # king -> party, BH08: the opened value xy + rho
    GRADIENT = "gradient"  # party -> master: the party's degree-2T share of its group's X̄ᵀs̄

    @property
    def phase(self) -> str:
        """setup (data sharing), offline (BH08 double sharings) or online (the training rounds)."""
        if self is Kind.DATA:
            return "setup"
        if self is Kind.DOUBLE:
            return "offline"
        return "online"


@dataclass(frozen=True)
class Message:
    """One message of a baseline; the transport only moves it from sender to receiver."""

    sender: int
    receiver: int
    kind: Kind
    round: int
    step: int
    payload: npt.NDArray[np.uint32]

    @property
    def nbytes(self) -> int:
        """Payload bytes on the wire (packed uint32 field elements)."""
        return int(self.payload.nbytes)


@dataclass
class Traffic:
    """Messages and payload bytes, by phase and by kind."""

    messages: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)

    def record(self, message: Message) -> None:
        """Count one message under its phase and under its kind."""
        for key in (message.kind.phase, message.kind.value):
            self.messages[key] += 1
            self.bytes[key] += message.nbytes

    def as_dict(self) -> dict[str, dict[str, int]]:
        """Plain counters for JSON."""
        return {"messages": dict(self.messages), "bytes": dict(self.bytes)}
