"""Every task the server starts is awaited or its failure is logged once.

A client offer whose BUNDLE group names a mid no m-line has (its audio m-line
deleted) made aiortc's own RTCPeerConnection.__connect task fail with an
AttributeError nobody retrieved: "Task exception was never retrieved" and a
traceback in the server log. Offers are now checked first, and any task's
failure is one log line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection

from callsctl_sfu.client.participant import ToneTrack
from callsctl_sfu.rtc.sdpcheck import check_sdp
from callsctl_sfu.tasks import install_exception_handler, spawn


async def boom() -> None:
    raise AttributeError("'NoneType' object has no attribute 'transport'")


async def test_a_spawned_task_failure_is_logged_once_without_traceback(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="callsctl_sfu.tasks"):
        task = spawn(boom(), "exploding")
        await asyncio.sleep(0.01)
        assert task.done()
        del task
        gc.collect()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "exploding" in errors[0].getMessage()
    assert "AttributeError" in errors[0].getMessage() and errors[0].exc_info is None


async def test_a_library_task_nobody_awaits_is_one_line(caplog) -> None:
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    install_exception_handler(loop)
    try:
        with caplog.at_level(logging.INFO):
            asyncio.ensure_future(boom())  # what aiortc does with __connect()
            await asyncio.sleep(0.01)
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    lines = [r for r in caplog.records if "boom" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in lines]


async def client_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(ToneTrack())
    pc.createDataChannel("calls-dc")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def without_audio_mline(sdp: str) -> str:
    return "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("m=audio"))


async def test_bundle_naming_a_missing_mid_is_refused() -> None:
    sdp = await client_offer()
    assert check_sdp(sdp) is None
    problem = check_sdp(without_audio_mline(sdp))
    assert problem is not None and "BUNDLE" in problem


async def test_mutated_offer_leaves_no_unretrieved_task_in_the_log(server) -> None:
    sdp = await client_offer()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.ws_url}?token={server.token('mut', 'mallory')}")
        await ws.send_str(json.dumps({"type": "join", "call": "mut"}))
        await ws.send_str(json.dumps({"type": "signal", "data": {
            "type": "offer", "sdp": without_audio_mline(sdp)}}))
        events = []
        while not any(e.get("code") == "bad_signal" for e in events):
            frame = await ws.receive(timeout=10)
            assert frame.type == aiohttp.WSMsgType.TEXT, frame
            events.append(json.loads(frame.data))
        error = next(e for e in events if e.get("code") == "bad_signal")
        assert "BUNDLE" in error["message"], error
        await ws.send_str(json.dumps({"type": "ping"}))  # the connection is still served
        while json.loads((await ws.receive(timeout=10)).data)["type"] != "pong":
            pass
        await ws.close()
    await asyncio.sleep(1)  # the task, had there been one, is collected by now
    log = server.log()
    assert "never retrieved" not in log and "Traceback" not in log, log[-3000:]
