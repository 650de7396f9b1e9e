"""The recorder job: a receive-only participant that writes every track to disk.

session.py joins the call (as the recorder the server knows from its token) and
taps each track's encoded frames; writers.py muxes them without re-encoding;
compose.py makes the one MP4 a person plays; run.py ties them together.
"""
