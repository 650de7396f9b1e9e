"""The default engine: CMU PocketSphinx (https://github.com/cmusphinx/pocketsphinx).

Its Python wheel carries the US English acoustic model, language model and
dictionary, so it works on a machine without internet. A model directory of
another language (the CMU Sphinx layout: an acoustic model folder `<lang>/`,
`<lang>.lm.bin` and `<lang>.dict`, as in the wheel's model/en-us) can be given
as the `transcription_model` setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callsctl_sfu.jobs.transcribe.engine import SAMPLE_RATE, EngineError, Word

# PocketSphinx counts frames of 10 ms (its default frame rate of 100 per second).
FRAME_S = 0.01
BUNDLED_LANGUAGES = ("en-US", "en")


def _model_files(model: str) -> dict[str, str]:
    """hmm/lm/dict of a model directory, or EngineError naming what is missing."""
    root = Path(model).expanduser()
    if not root.is_dir():
        raise EngineError(f"transcription model {model!r} is not a directory; set "
                          "transcription_model to a PocketSphinx model directory or leave "
                          "it empty for the bundled en-US model")
    hmm = next((p for p in sorted(root.iterdir()) if p.is_dir() and (p / "mdef").exists()),
               None)
    lm = next(iter(sorted(root.glob("*.lm.bin"))), None) or \
        next(iter(sorted(root.glob("*.lm"))), None)
    dic = next(iter(sorted(root.glob("*.dict"))), None)
    missing = [what for what, found in (("an acoustic model folder (with mdef)", hmm),
                                        ("a language model (*.lm.bin)", lm),
                                        ("a dictionary (*.dict)", dic)) if found is None]
    if missing:
        raise EngineError(f"transcription model {model!r} lacks {', '.join(missing)}")
    return {"hmm": str(hmm), "lm": str(lm), "dict": str(dic)}


class PocketsphinxEngine:
    """PocketSphinx with the bundled en-US model, or the model directory given."""

    name = "pocketsphinx"

    def __init__(self, model: str = "", language: str = "en-US") -> None:
        try:
            import pocketsphinx
        except ImportError:
            raise EngineError("the pocketsphinx engine is not installed; pip install "
                              "pocketsphinx (it is a dependency of callsctl)") from None
        options: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        if model:
            options.update(_model_files(model))
        elif language not in BUNDLED_LANGUAGES:
            raise EngineError(f"the bundled pocketsphinx model is en-US only, not "
                              f"{language!r}; set transcription_model to a model directory "
                              "of that language")
        try:
            self._decoder = pocketsphinx.Decoder(**options)
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"pocketsphinx cannot load its model"
                              f"{' ' + repr(model) if model else ''}: {exc}") from None

    def transcribe(self, pcm: bytes) -> list[Word]:
        decoder = self._decoder
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        words = []
        for segment in decoder.seg():
            text = segment.word
            if text.startswith(("<", "[")) or text.startswith("++"):  # <s>, <sil>, [NOISE]
                continue
            text = text.split("(", 1)[0]  # "when(4)": the 4th pronunciation of "when"
            words.append(Word(text, segment.start_frame * FRAME_S,
                              (segment.end_frame + 1) * FRAME_S))
        return words
