"""Jobs beside the SFU: recording now, transcription and captions later.

A job is work on a call's media that must never cost the media server its
event loop: it runs in its own process (runner.py, local by default) or on a
`callsctl worker` machine pulling from a Redis queue (queue.py). The SFU only
knows a job through the admin API (api.py), the jobs table (store.py) and the
receive-only participant a recorder joins as.
"""
