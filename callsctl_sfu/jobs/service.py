"""The job service of one server: create, stop, list and clean up jobs.

It sits on the admin plane (ControlPlane: database writer, SSE events) and the
CallManager (which calls are live; the host's record button), and hands the
work to a runner. Rules a user meets:

- a recording needs a live call, and a call has at most one active recording
  (a second request is refused with 409, from the API, the CLI or the host);
- job state changes are written to the jobs table and published on the
  events stream (`{"type": "job", ...}`);
- a job left active by a server that crashed is marked failed at the next start;
- finished recordings older than `recording_retention_days` are deleted.
"""

from __future__ import annotations

import asyncio
import builtins  # `list` in annotations below: the class has a list() method
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callsctl_sfu import events
from callsctl_sfu.api.appkeys import JOBS, JWT_SECRET, SERVER_INFO
from callsctl_sfu.calls.manager import JoinRefused
from callsctl_sfu.jobs.model import FINISHED, Job, JobError, new_job_id
from callsctl_sfu.jobs.queue import QueueError, QueueRunner
from callsctl_sfu.jobs.runner import LOG_FILE, LocalRunner
from callsctl_sfu.jobs.store import JobStore
from callsctl_sfu.tokens import issue_token

if TYPE_CHECKING:
    from aiohttp import web

    from callsctl_sfu.calls.manager import CallManager
    from callsctl_sfu.calls.model import Call, Session
    from callsctl_sfu.control import ControlPlane

log = logging.getLogger("callsctl_sfu.jobs")

RECORDINGS_DIR = "recordings"
RETENTION_SWEEP_S = 3600.0
SHUTDOWN_WAIT_S = 10.0
TOKEN_SLACK_S = 600.0


class JobService:
    """Jobs of one server; the admin API and the host's record button use it."""

    def __init__(self, control: ControlPlane, manager: CallManager, secret: bytes,
                 server_info: Any) -> None:
        self.control = control
        self.manager = manager
        self.config = control.config
        self.secret = secret
        self.server_info = server_info
        self.store = JobStore(control.store)
        self.jobs_dir = Path(self.config.data_dir).expanduser() / RECORDINGS_DIR
        self.runner: LocalRunner | QueueRunner
        if self.config.job_queue_url:
            self.runner = QueueRunner(self.config.job_queue_url, self._changed)
        else:
            self.runner = LocalRunner(self.jobs_dir, self.config.max_concurrent_jobs,
                                      self._changed)
        self.unavailable: str | None = None
        self.active: dict[str, Job] = {}
        self._transcribe_after: dict[str, bool] = {}  # recording job -> transcribe when done
        self._transcribing: dict[str, str] = {}  # transcription job -> its recording
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        interrupted = await self.store.fail_interrupted(
            time.time(), "the server stopped while the job was running (crash or kill); "
                         "the files written so far are kept")
        if interrupted:
            log.warning("%d job(s) from the previous run were interrupted; marked failed",
                        len(interrupted))
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="job-retention")
        if isinstance(self.runner, QueueRunner):
            try:
                await self.runner.open()
                log.info("jobs go to the Redis queue at %s (callsctl worker)",
                         self.config.job_queue_url)
            except QueueError as exc:  # calls work without it; job requests say why not
                self.unavailable = str(exc)
                log.error("%s; recording is unavailable until the server restarts", exc)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.runner.close(SHUTDOWN_WAIT_S)

    # -- operations ---------------------------------------------------------------------

    async def create(self, kind: str, call_id: str, max_duration: float,
                     recording: str | None = None, transcribe: bool | None = None,
                     language: str | None = None, model: str | None = None) -> Job:
        if self.unavailable:
            raise JobError(503, f"the job queue is unavailable: {self.unavailable}")
        if kind == "transcription":
            return await self._create_transcription(recording or "", max_duration,
                                                    self._speech(language, model))
        call = self.manager.calls.get(call_id)
        if call is None or not call.people():
            raise JobError(409, f"no live call {call_id!r}: a {kind} job starts in a call "
                                "that has participants")
        if kind == "captions":
            return await self._create_captions(call_id, max_duration,
                                               self._speech(language, model))
        current = self.for_call(call_id)
        if current is not None:
            raise JobError(409, f"call {call_id!r} is already being recorded by job "
                                f"{current.id}; stop it first (callsctl record stop "
                                f"{current.id})")
        job = Job(new_job_id(), kind, call_id, max_duration, runner=self.runner.name)
        self.active[job.id] = job
        if transcribe is None:
            transcribe = bool(self.config.transcription_enabled)
        self._transcribe_after[job.id] = transcribe
        await self._changed(job)
        self.runner.submit(job, self._spec(job))
        log.info("job %s: %s of call %s (max %g s)", job.id, kind, call_id, max_duration)
        return job

    def _speech(self, language: str | None, model: str | None) -> dict[str, str]:
        """Engine, model and language of a job: the request's, else the server's settings."""
        return {"engine": self.config.transcription_engine,
                "model": self.config.transcription_model if model is None else model,
                "language": language or self.config.transcription_language}

    async def _create_captions(self, call_id: str, max_duration: float,
                               speech: dict[str, str] | None = None) -> Job:
        if not self.config.live_captions_enabled:
            raise JobError(409, "live captions are off on this server; set "
                                "live_captions_enabled = true (CALLSCTL_LIVE_CAPTIONS_ENABLED)")
        current = self.captions_for(call_id)
        if current is not None:
            raise JobError(409, f"call {call_id!r} already has live captions (job "
                                f"{current.id}); stop them first")
        job = Job(new_job_id(), "captions", call_id, max_duration, runner=self.runner.name)
        self.active[job.id] = job
        await self._changed(job)
        spec = self._spec(job)
        spec.update(speech or self._speech(None, None))
        self.runner.submit(job, spec)
        log.info("job %s: live captions of call %s", job.id, call_id)
        return job

    def captions_for(self, call_id: str) -> Job | None:
        return next((j for j in self.active.values()
                     if j.call_id == call_id and j.type == "captions"), None)

    async def host_captions(self, call: Call, session: Session, on: bool) -> None:
        """The host's captions button (signaling captions_start / captions_stop)."""
        try:
            if on:
                await self.create("captions", call.call_id,
                                  float(self.config.recording_max_duration))
                return
            job = self.captions_for(call.call_id)
            if job is None:
                raise JobError(409, "this call has no live captions")
            await self.stop(job.id, f"stopped by the host ({session.name})")
        except JobError as exc:
            raise JoinRefused("captions_refused", exc.message) from None

    async def _create_transcription(self, recording_id: str, max_duration: float,
                                    speech: dict[str, str] | None = None) -> Job:
        recording = await self.get(recording_id)
        if recording.type != "recording":
            raise JobError(409, f"job {recording_id} is a {recording.type}, not a recording")
        if recording.active:
            raise JobError(409, f"recording {recording_id} is still {recording.state}; it "
                                "is transcribed once it is finished")
        busy = next((j for j in self.active.values()
                     if self._transcribing.get(j.id) == recording_id), None)
        if busy is not None:
            raise JobError(409, f"recording {recording_id} is already being transcribed by "
                                f"job {busy.id}")
        directory = recording.output.get("directory") or str(self.directory(recording.id))
        job = Job(new_job_id(), "transcription", recording.call_id, max_duration,
                  runner=self.runner.name)
        self.active[job.id] = job
        self._transcribing[job.id] = recording_id
        await self._changed(job)
        self.runner.submit(job, {
            "id": job.id, "type": "transcription", "call": job.call_id,
            "max_duration": max_duration, "recording": recording_id,
            "recording_dir": directory, **(speech or self._speech(None, None))})
        log.info("job %s: transcription of recording %s", job.id, recording_id)
        return job

    def _spec(self, job: Job) -> dict[str, Any]:
        """Everything the worker needs, so it can run on another machine too."""
        info = self.server_info()
        if self.config.public_url and isinstance(self.runner, QueueRunner):
            # A worker on another machine reaches the server the way participants do.
            base = self.config.public_url.rstrip("/")
            ws_url = "ws" + base[4:] + "/ws" if base.startswith("http") else base + "/ws"
            return self._spec_with(job, ws_url)
        host = self.config.bind
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if ":" in host:
            host = f"[{host}]"
        scheme = "wss" if self.control.ssl_context is not None else "ws"
        return self._spec_with(job, f"{scheme}://{host}:{info['api_port']}/ws")

    def _spec_with(self, job: Job, ws_url: str) -> dict[str, Any]:
        role = "captions" if job.type == "captions" else "recorder"
        token = issue_token(self.secret, job.call_id, f"{role}-{job.id}",
                            job.max_duration + TOKEN_SLACK_S, role=role)
        return {"id": job.id, "type": job.type, "call": job.call_id,
                "max_duration": job.max_duration, "token": token, "ws_url": ws_url}

    def for_call(self, call_id: str) -> Job | None:
        return next((j for j in self.active.values()
                     if j.call_id == call_id and j.type == "recording"), None)

    async def get(self, job_id: str) -> Job:
        job = self.active.get(job_id)
        if job is not None:
            return job
        await self.control.flush()
        job = await self.store.get(job_id)
        if job is None:
            raise JobError(404, f"no job {job_id!r} (callsctl record list shows them)")
        return job

    async def list(self, limit: int, call_id: str | None) -> list[Job]:
        await self.control.flush()
        return await self.store.list(limit, call_id)

    async def stop(self, job_id: str, reason: str = "stopped by an admin") -> Job:
        job = await self.get(job_id)
        if job.state in FINISHED:
            return job
        self.runner.stop(job.id, reason)
        return job

    async def delete(self, job_id: str) -> None:
        job = await self.get(job_id)
        if job.active:
            raise JobError(409, f"job {job_id} is {job.state}; stop it first (callsctl "
                                f"record stop {job_id})")
        self._remove_files(job_id)
        await self.control.flush()
        await self.store.delete(job_id)

    def directory(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def logs(self, job: Job, tail: int) -> str:
        path = self.directory(job.id) / LOG_FILE
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:]) + ("\n" if lines else "")

    async def annotate_history(self, calls: builtins.list[dict[str, Any]]) -> None:
        """Add `recordings` to call history entries: the jobs made during each call."""
        by_call: dict[str, list[Job]] = {}
        for job in await self.store.list(10000):
            if job.type == "recording":  # transcriptions are listed with their recording
                by_call.setdefault(job.call_id, []).append(job)
        for call in calls:
            ended = call.get("ended_at") or time.time()
            call["recordings"] = [
                {"id": j.id, "state": j.state, "start_at": j.started_at,
                 "duration_s": j.output.get("duration_s"), "files": j.output.get("files", []),
                 "participants": j.output.get("participants", []),
                 "transcript": j.output.get("transcript")}
                for j in reversed(by_call.get(call["id"], []))
                if call["started_at"] <= j.created_at <= ended]

    # -- the host's record button (signaling record_start / record_stop) --------------------

    async def host_record(self, call: Call, session: Session, on: bool) -> None:
        try:
            if on:
                await self.create("recording", call.call_id,
                                  float(self.config.recording_max_duration))
                return
            job = self.for_call(call.call_id)
            if job is None:
                raise JobError(409, "this call is not being recorded")
            await self.stop(job.id, f"stopped by the host ({session.name})")
        except JobError as exc:
            raise JoinRefused("recording_refused", exc.message) from None

    # -- bookkeeping ---------------------------------------------------------------------------

    async def _changed(self, job: Job) -> None:
        if job.state in FINISHED:
            self.active.pop(job.id, None)
            await self._drop_recorder(job)
        snapshot = Job(**{**job.__dict__, "output": dict(job.output)})
        self.control._queue(self.store.save, snapshot)
        self.control.publish({"type": "job", "call": job.call_id, "job": snapshot.public()})
        if job.state in FINISHED:
            await self._after(job)

    async def _after(self, job: Job) -> None:
        """A finished recording may be transcribed; a finished transcription is listed
        with its recording (output_data.transcript and the files)."""
        if job.type == "recording" and self._transcribe_after.pop(job.id, False):
            if job.state == "done":
                try:
                    await self._create_transcription(
                        job.id, float(self.config.recording_max_duration))
                except JobError as exc:
                    log.error("recording %s cannot be transcribed: %s", job.id, exc.message)
        elif job.type == "captions" and job.state == "failed":
            await self._tell_host(job.call_id, events.Error(
                code="captions_failed", message=f"live captions stopped: {job.error}").wire())
        elif job.type == "transcription":
            recording_id = self._transcribing.pop(job.id, job.output.get("recording"))
            if not recording_id:
                return
            with contextlib.suppress(JobError):
                recording = await self.get(recording_id)
                files = [f for f in job.output.get("files", []) if job.state == "done"]
                recording.output["transcript"] = {
                    "job": job.id, "state": job.state, "files": files, "error": job.error}
                listed = recording.output.setdefault("files", [])
                listed += [f for f in files if f not in listed]
                await self._changed(recording)

    async def _tell_host(self, call_id: str, event: dict[str, Any]) -> None:
        """One event to the call's host (who pressed the button), if the call is live."""
        call = self.manager.calls.get(call_id)
        host = self.manager.participants.get(call.host) if call and call.host else None
        if host is not None and host.send is not None:
            with contextlib.suppress(Exception):
                await host.send(event)

    async def _drop_recorder(self, job: Job) -> None:
        """A worker that died leaves its session behind: remove it, the call goes on."""
        user = f"{'captions' if job.type == 'captions' else 'recorder'}-{job.id}"
        for participant in list(self.manager.participants.values()):
            if participant.session.recorder and participant.session.user == user:
                self.manager.detach(participant.session.session_id)
                await self.manager.leave(participant.session.session_id, "recording job ended")

    def _remove_files(self, job_id: str) -> None:
        directory = self.directory(job_id)
        if directory.parent == self.jobs_dir:
            shutil.rmtree(directory, ignore_errors=True)

    async def _sweep_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.sweep()
            await asyncio.sleep(RETENTION_SWEEP_S)

    async def sweep(self) -> int:
        """Delete finished jobs older than the retention; returns how many."""
        days = self.config.recording_retention_days
        if not days:
            return 0
        await self.control.flush()
        old = await self.store.older_than(time.time() - days * 86400)
        for job in old:
            self._remove_files(job.id)
            await self.store.delete(job.id)
        if old:
            log.info("retention: deleted %d recording(s) older than %d day(s)", len(old), days)
        return len(old)


def attach_jobs(app: web.Application, control: ControlPlane) -> JobService:
    """Hook the job service into a server's app (routes, startup, shutdown)."""
    from callsctl_sfu.jobs.api import add_job_routes
    from callsctl_sfu.jobs.captions import CaptionMetrics, CaptionRelay

    assert control.manager is not None
    service = JobService(control, control.manager, app[JWT_SECRET], app[SERVER_INFO])
    control.manager.recording_control = service.host_record
    control.manager.captions_control = service.host_captions
    metrics = CaptionMetrics(control.metrics.registry if control.metrics else None)
    control.manager.captions_relay = CaptionRelay(control.manager, metrics)
    app[JOBS] = service

    async def on_startup(_app: web.Application) -> None:
        await service.start()

    async def on_shutdown(_app: web.Application) -> None:
        await service.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    add_job_routes(app)
    return service
