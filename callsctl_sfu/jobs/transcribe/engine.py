"""The speech-to-text engine interface and how one is chosen from the settings.

An engine turns one utterance (16 kHz mono signed 16-bit PCM) into words with
their times. Everything else — decoding recordings, cutting utterances,
WebVTT, captions — is engine-neutral, so adding an engine is one module and
one line in ENGINES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from callsctl_sfu.errors import CallsctlError

SAMPLE_RATE = 16000
ENGINES = ("pocketsphinx",)


class EngineError(CallsctlError, RuntimeError):
    """The engine or its model cannot be used; the message says what to install or set."""
    code = "transcriber_unavailable"


@dataclass(frozen=True)
class Word:
    """One recognised word, its times in seconds from the start of the utterance."""

    text: str
    start: float
    end: float


class Engine(Protocol):
    """What the transcription job and the captions worker need from an engine."""

    name: str

    def transcribe(self, pcm: bytes) -> list[Word]:
        """Words of one utterance of 16 kHz mono s16le PCM (may be empty)."""
        ...


def load_engine(name: str = "pocketsphinx", model: str = "",
                language: str = "en-US") -> Engine:
    """The engine called `name` with `model` (a path; empty = the engine's own model).

    Raises EngineError with one sentence when the engine is unknown, not
    installed, or the model is missing or unusable.
    """
    if name == "pocketsphinx":
        from callsctl_sfu.jobs.transcribe.pocketsphinx_engine import PocketsphinxEngine

        return PocketsphinxEngine(model, language)
    raise EngineError(f"unknown transcription engine {name!r}; known: {', '.join(ENGINES)}")
