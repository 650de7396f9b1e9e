"""`callsctl record …`: start, stop, list, inspect and delete call recordings.

A recording is a job of the server's job service (POST /api/v1/jobs, type
recording). It talks to the same admin API as `callsctl calls`, found the
same way (--server, CALLSCTL_SERVER, client config, the local data dir).
"""

from __future__ import annotations

import time
from typing import Any

import typer

from callsctl.adminclient import AdminApiError, AdminClient
from callsctl.calls import (
    JSON_OPTION,
    _console,
    _emit_json,
    _narrow_table,
    _when,
    admin_api,
    calls_root,
)
from callsctl.errors import fail

app = typer.Typer(
    name="record",
    help="Record calls: per-speaker and per-video files plus one MP4 (the server's job "
         "service).\n\nServer and admin key are found as for `callsctl calls`.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback()(calls_root)

FINISHED = ("done", "failed")
WAIT_POLL_S = 0.5


def _duration(job: dict[str, Any]) -> str:
    seconds = (job.get("output_data") or {}).get("duration_s")
    if seconds is None and job.get("start_at"):
        seconds = (job.get("stop_at") or time.time()) - job["start_at"]
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _summary(job: dict[str, Any]) -> str:
    line = f"job {job['id']}: {job['type']} of call {job['call']}, {job['state']}"
    output = job.get("output_data") or {}
    if output.get("stop_reason"):
        line += f" ({output['stop_reason']})"
    if job.get("error"):
        line += f": {job['error']}"
    return line


def _print_job(job: dict[str, Any]) -> None:
    console = _console()
    console.print(_summary(job), markup=False)
    output = job.get("output_data") or {}
    console.print(f"started {_when(job.get('start_at'))}, stopped {_when(job.get('stop_at'))}"
                  f", duration {_duration(job)}", markup=False)
    if output.get("participants"):
        console.print("participants: " + ", ".join(output["participants"]), markup=False)
    if output.get("directory"):
        where = f"{output['host']}:" if output.get("host") else ""  # a `callsctl worker`
        console.print(f"directory: {where}{output['directory']}", markup=False)
    for track in output.get("tracks", []):
        console.print(f"  {track['file']}: {track['kind']} of {track['name']}, from "
                      f"{track['start_s']:.2f} s for {track['duration_s']:.1f} s", markup=False)
    if output.get("composed"):
        console.print(f"  {output['composed']}: everything composed (H.264 + AAC)",
                      markup=False)
    transcript = output.get("transcript")
    if transcript:  # a transcription job's result, listed with its recording
        files = ", ".join(transcript.get("files") or []) or "none"
        console.print(f"transcript: job {transcript.get('job')}, {transcript.get('state')}, "
                      f"files {files}", markup=False)
    if job.get("type") == "transcription" and job.get("state") == "done":
        console.print(f"transcript of recording {output['recording']}: {output.get('cues', 0)} "
                      f"cue(s), {output.get('audio_s', 0)} s of audio, "
                      f"{output.get('cpu_s', 0)} CPU s", markup=False)


def _find_job(api: AdminClient, job_or_call: str) -> dict[str, Any]:
    """A job id, or the call id of a call with an active recording."""
    jobs = api.list_jobs(1000).get("jobs", [])
    for job in jobs:
        if job["id"] == job_or_call:
            return job
    for job in jobs:
        if job["call"] == job_or_call and job["state"] not in FINISHED and \
                job["type"] == "recording":
            return job
    fail(f"no recording job {job_or_call!r} and no active recording of a call by that id "
         "(see `callsctl record list`)")


def _wait(api: AdminClient, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = api.job(job_id)
        if job["state"] in FINISHED:
            return job
        if time.monotonic() > deadline:
            fail(f"job {job_id} is still {job['state']} after {timeout:g} s; check it later "
                 f"with `callsctl record get {job_id}`")
        time.sleep(WAIT_POLL_S)


@app.command("start")
def start(ctx: typer.Context,
          call_id: str = typer.Argument(..., metavar="CALL", help="Id of a live call."),
          max_duration: float | None = typer.Option(
              None, "--max-duration", min=1, max=86400,
              help="Stop after this many seconds. [default: the server's "
                   "recording_max_duration]"),
          as_json: bool = JSON_OPTION) -> None:
    """Start recording a live call (everyone in it sees that it is recorded)."""
    body: dict[str, Any] = {"type": "recording", "call": call_id}
    if max_duration is not None:
        body["max_duration_sec"] = max_duration
    with admin_api(ctx) as api:
        job = api.create_job(body)
    if as_json:
        _emit_json(job)
        return
    _console().print(f"recording call {call_id} as job {job['id']}; stop it with "
                     f"`callsctl record stop {job['id']}`", markup=False)


@app.command("stop")
def stop(ctx: typer.Context,
         job_or_call: str = typer.Argument(..., metavar="JOB",
                                           help="Job id, or the id of a call being recorded."),
         wait: bool = typer.Option(True, "--wait/--no-wait",
                                   help="Wait until the files are finished and composed."),
         timeout: float = typer.Option(600.0, "--wait-timeout", min=1,
                                       help="Seconds --wait waits at most."),
         as_json: bool = JSON_OPTION) -> None:
    """Stop a recording: the files are finished and the MP4 composed."""
    with admin_api(ctx) as api:
        job = api.stop_job(_find_job(api, job_or_call)["id"])
        if wait:
            job = _wait(api, job["id"], timeout)
    if as_json:
        _emit_json(job)
    else:
        _print_job(job)
    if job["state"] == "failed":
        raise typer.Exit(1)


@app.command("list")
def list_jobs(ctx: typer.Context,
              call_id: str | None = typer.Option(None, "--call", help="Only this call id."),
              limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000,
                                        help="How many, newest first."),
              as_json: bool = JSON_OPTION) -> None:
    """Recordings (and their transcriptions, captions jobs), newest first."""
    with admin_api(ctx) as api:
        data = api.list_jobs(limit, call_id)
    if as_json:
        _emit_json(data)
        return
    jobs = data.get("jobs", [])
    if not jobs:
        _console().print("no recordings yet")
        return
    table = _narrow_table(f"{len(jobs)} job(s)",
                          ("job", "type", "call", "state", "started", "duration", "files"),
                          numeric=("duration", "files"))
    for job in jobs:
        files = (job.get("output_data") or {}).get("files") or []
        table.add_row(job["id"], job["type"], job["call"], job["state"],
                      _when(job.get("start_at")), _duration(job), str(len(files)))
    _console().print(table)


@app.command("get")
def get(ctx: typer.Context, job_id: str = typer.Argument(..., metavar="JOB"),
        logs: bool = typer.Option(False, "--logs", help="Print the worker's log instead."),
        as_json: bool = JSON_OPTION) -> None:
    """One recording: state, times, participants, files (or its worker's log)."""
    with admin_api(ctx) as api:
        job = api.job(job_id)  # a clear error for an unknown job
        text = api.job_logs(job_id) if logs else ""
    if logs:
        typer.echo(text, nl=False)
        return
    if as_json:
        _emit_json(job)
    else:
        _print_job(job)


@app.command("rm")
def remove(ctx: typer.Context, job_id: str = typer.Argument(..., metavar="JOB"),
           as_json: bool = JSON_OPTION) -> None:
    """Delete a finished recording: its files and its job."""
    with admin_api(ctx) as api:
        data = api.delete_job(job_id)
    if as_json:
        _emit_json(data)
    else:
        _console().print(f"deleted recording {job_id} and its files", markup=False)


@app.command("transcribe")
def transcribe(ctx: typer.Context,
               recording_id: str = typer.Argument(..., metavar="RECORDING",
                                                  help="Id of a finished recording job."),
               wait: bool = typer.Option(True, "--wait/--no-wait",
                                         help="Wait until the transcript is written."),
               timeout: float = typer.Option(1800.0, "--wait-timeout", min=1,
                                             help="Seconds --wait waits at most."),
               as_json: bool = JSON_OPTION) -> None:
    """Transcribe a finished recording: transcript.vtt and transcript.txt beside it."""
    with admin_api(ctx) as api:
        job = api.create_job({"type": "transcription", "recording": recording_id})
        if wait:
            job = _wait(api, job["id"], timeout)
    if as_json:
        _emit_json(job)
    elif job["state"] in FINISHED:
        _print_job(job)
        if job["state"] == "done":
            _console().print(f"read it with `callsctl record transcript {recording_id}`",
                             markup=False)
    else:
        _console().print(f"transcribing recording {recording_id} as job {job['id']}",
                         markup=False)
    if job["state"] == "failed":
        raise typer.Exit(1)


@app.command("transcript")
def transcript(ctx: typer.Context,
               recording_id: str = typer.Argument(..., metavar="RECORDING",
                                                  help="Id of a transcribed recording."),
               vtt: bool = typer.Option(False, "--vtt", help="Print the WebVTT file instead "
                                                             "of the plain text."),
               output: str | None = typer.Option(None, "--output", "-o",
                                                 help="Write it to this file."),
               as_json: bool = JSON_OPTION) -> None:
    """Print (or save) the transcript of a recording."""
    name = "transcript.vtt" if vtt else "transcript.txt"
    with admin_api(ctx) as api:
        job = api.job(recording_id)
        info = (job.get("output_data") or {}).get("transcript")
        if not info:
            fail(f"recording {recording_id} has no transcript; make one with `callsctl record "
                 f"transcribe {recording_id}`")
        if info.get("state") != "done":
            fail(f"the transcription of recording {recording_id} (job {info.get('job')}) "
                 f"{info.get('state')}: {info.get('error') or 'no reason given'}")
        try:
            text = api.job_file(recording_id, name)
        except AdminApiError as exc:
            fail(f"cannot download {name} of recording {recording_id}: HTTP "
                 f"{exc.status} (the files stay on the machine that recorded it)")
    if output:
        try:
            with open(output, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}")
    if as_json:
        _emit_json({"recording": recording_id, "file": name, "text": text,
                    "saved_to": output})
    elif not output:
        typer.echo(text, nl=False)


@app.command("captions")
def captions(ctx: typer.Context,
             call_id: str = typer.Argument(..., metavar="CALL", help="Id of a live call."),
             stop_them: bool = typer.Option(False, "--stop", help="Stop the call's captions."),
             as_json: bool = JSON_OPTION) -> None:
    """Start (or --stop) live captions in a call: everyone sees each speaker's words."""
    with admin_api(ctx) as api:
        if stop_them:
            jobs = api.list_jobs(1000, call_id)
            job = next((j for j in jobs.get("jobs", []) if j["type"] == "captions"
                        and j["state"] not in FINISHED), None)
            if job is None:
                fail(f"call {call_id!r} has no live captions")
            job = _wait(api, api.stop_job(job["id"])["id"], 60)
        else:
            job = api.create_job({"type": "captions", "call": call_id})
    if stop_them:
        message = f"captions of call {call_id} stopped (job {job['id']}, " \
                  f"{(job.get('output_data') or {}).get('captions', 0)} caption(s))"
    else:
        message = (f"live captions in call {call_id} as job {job['id']}; stop them with "
                   f"`callsctl record captions {call_id} --stop`")
    if as_json:
        _emit_json(job)
    else:
        _console().print(message, markup=False)
