"""Job routes on the admin API, in the spirit of Mattermost's calls-offloader.

    POST   /api/v1/jobs                    {type, call, max_duration_sec, transcribe} -> 201
    POST   /api/v1/jobs                    {type: transcription, recording} -> 201 job
    GET    /api/v1/jobs[?call=&limit=]     {"jobs": [...]}, newest first
    GET    /api/v1/jobs/{id}               the job: state, start/stop times, output files
    GET    /api/v1/jobs/{id}/logs[?tail=]  the worker's log (text)
    GET    /api/v1/jobs/{id}/files/{name}  one output file (download)
    POST   /api/v1/jobs/{id}/stop          stop it (the recording is finished and composed)
    DELETE /api/v1/jobs/{id}               delete a finished job and its files

The admin key middleware (api/admin.py) guards them like every /api/ route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from callsctl_sfu.api import paths
from callsctl_sfu.api.admin import ApiError, _body, _id, error
from callsctl_sfu.api.appkeys import JOBS
from callsctl_sfu.jobs.model import JobError, parse_create

if TYPE_CHECKING:
    from callsctl_sfu.jobs.service import JobService

LIST_MAX = 1000
TAIL_MAX = 10000


def _service(request: web.Request) -> JobService:
    return request.app[JOBS]


def _handles_job_errors(handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except JobError as exc:
            return error(exc.status, exc.message)

    wrapped.__name__ = handler.__name__
    return wrapped


def _int_query(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, not {raw[:20]!r}") from None
    if not 1 <= value <= high:
        raise ApiError(400, f"{name} must be from 1 to {high}")
    return value


@_handles_job_errors
async def create_job(request: web.Request) -> web.Response:
    service = _service(request)
    kind, call_id, duration, options = parse_create(
        await _body(request), float(service.config.recording_max_duration))
    job = await service.create(kind, call_id, duration, **options)
    return web.json_response(job.public(), status=201)


@_handles_job_errors
async def list_jobs(request: web.Request) -> web.Response:
    limit = _int_query(request, "limit", 100, LIST_MAX)
    call_id = request.query.get("call") or None
    jobs = await _service(request).list(limit, call_id)
    return web.json_response({"jobs": [j.public() for j in jobs]})


@_handles_job_errors
async def get_job(request: web.Request) -> web.Response:
    job = await _service(request).get(_id(request, "job_id"))
    return web.json_response(job.public())


@_handles_job_errors
async def job_logs(request: web.Request) -> web.Response:
    service = _service(request)
    job = await service.get(_id(request, "job_id"))
    tail = _int_query(request, "tail", 200, TAIL_MAX)
    return web.Response(text=service.logs(job, tail), content_type="text/plain")


@_handles_job_errors
async def job_file(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    job = await service.get(_id(request, "job_id"))
    name = request.match_info["name"]
    path = service.directory(job.id) / name
    if "/" in name or name.startswith(".") or name == "job.json" or not path.is_file():
        raise JobError(404, f"job {job.id} has no file {name[:80]!r}")
    return web.FileResponse(path)


@_handles_job_errors
async def stop_job(request: web.Request) -> web.Response:
    job = await _service(request).stop(_id(request, "job_id"))
    return web.json_response(job.public())


@_handles_job_errors
async def delete_job(request: web.Request) -> web.Response:
    job_id = _id(request, "job_id")
    await _service(request).delete(job_id)
    return web.json_response({"ok": True, "id": job_id, "deleted": True})


def add_job_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(paths.JOBS, create_job)
    r.add_get(paths.JOBS, list_jobs)
    r.add_get(paths.JOB, get_job)
    r.add_get(paths.JOB_LOGS, job_logs)
    r.add_get(paths.JOB_FILE, job_file)
    r.add_post(paths.JOB_STOP, stop_job)
    r.add_delete(paths.JOB, delete_job)
