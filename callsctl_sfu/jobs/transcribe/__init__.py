"""Speech to text for calls: transcription jobs after a recording, live captions during one.

The engine sits behind a small interface (engine.py) so a better engine with a
user-supplied model can be added without touching the jobs around it; the
default, pocketsphinx, ships its English model inside its wheel (offline).
"""
