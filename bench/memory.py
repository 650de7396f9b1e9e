"""Memory of `callsctl serve`: idle RSS, RSS per joined audio session, and where it goes.

Three measurements, each on loopback with ephemeral ports and a temporary data dir:

- imports: a fresh interpreter imports what `callsctl serve` imports, one
  package at a time in dependency order, and reports how much each one adds
  to VmRSS (anonymous memory: the Python objects; file-backed: the shared
  libraries such as PyAV's FFmpeg). This is the floor of an idle server.
- sessions: `callsctl serve` is started as a subprocess; its RSS (VmRSS,
  RssAnon, RssFile from /proc/<pid>/status) is read once it is ready and idle
  (and whether PyAV's and libsrtp's libraries are mapped: the media stack is
  loaded by the first call, rtc/medialoader.py). Then one participant joins
  a call of its own and RSS is read again once its media is connected: the
  first join, which loads the media stack. Then the load generator
  (callsctl_sfu.client.loadgen, in this process) joins N audio participants
  to another call (2 unmuted, the rest muted listeners) at 25/s and RSS is
  read again at the end of a steady window. RSS per session = (RSS joined -
  RSS after the first join) / participants joined, so the one-off load is
  not spread over the sessions.
- with --before DIR, every size is measured twice in the same run, first with
  the server of another checkout (DIR, e.g. the commit a change started from,
  run with this interpreter), then with this one's, and both are listed.
- with --trace, the same server runs under bench/traced_serve.py (tracemalloc
  on, a snapshot dumped on SIGUSR2): the allocation sites that grew between
  idle and joined, per session, by file and line. Traced RSS is not a figure
  (tracemalloc doubles the heap); the sites are.
- with --data-channel on (or both: each size without, then with), every load
  generator participant also opens the `calls-dc` data channel as the web and
  Mattermost clients do (SCTP over DTLS; LoadConfig.data_channel) and pings once.
- with --native, the server runs with heaptrack's preload library instead:
  every malloc is recorded (OpenSSL, libsrtp, the C fan-out: what tracemalloc
  cannot see) and the sites holding the heap at its peak are listed per session.

    python bench/memory.py                                  # imports + 50 and 200, printed
    python bench/memory.py --sizes 200 --trace --top 25     # where it goes: Python heap
    python bench/memory.py --sizes 200 --native --top 25    # and native (heaptrack)
    python bench/memory.py --write bench/RESULTS.md --label after
    python bench/memory.py --json                           # one JSON document
    python bench/memory.py --sizes 200 --before /tmp/base   # another checkout vs this one
    python bench/memory.py --sizes 200 --preload-media      # the media stack loaded at start
    python bench/memory.py --sizes 200 --data-channel both  # sessions without, then with calls-dc
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from forwarding import write_section  # noqa: E402
from run_all import Running, _wait_ready, free_port, machine  # noqa: E402

from callsctl_sfu.client.loadgen import LoadConfig, LoadTest  # noqa: E402
from callsctl_sfu.client.participant import Participant  # noqa: E402
from callsctl_sfu.datadir import load_or_create_secret  # noqa: E402
from callsctl_sfu.tokens import issue_token  # noqa: E402

JOIN_RATE = 25.0  # per second, bench/run_all.py's pacing
SETTLE_S = 2.0  # after ready, before the idle reading (startup's garbage collected)
MAX_SIZE = 300  # one load generator on a shared 2-core machine

# What `callsctl serve` imports, in an order where each step adds only itself
# (its own dependencies that no earlier step imported count towards it).
# The first group is what an idle server imports (its serving pass: callsctl/serving.py);
# the steps "at the first call" are what the first participant brings: PyJWT with its
# token check, and the media stack rtc/medialoader.py loads (or at start with
# --preload-media); the last are what only the parsing pass of `callsctl serve` imports.
IMPORT_STEPS = (
    ("interpreter", None),
    ("asyncio (+ ssl, OpenSSL's libssl/libcrypto)", "asyncio"),
    ("aiohttp.web (imported as the serving pass does: callsctl/leanimports.py)",
     "callsctl.leanimports:import_web_stack,aiohttp.web"),
    ("prometheus_client", "prometheus_client"),
    ("aiosqlite", "aiosqlite"),
    ("callsctl_sfu.server (the engine, without the media stack)", "callsctl_sfu.server"),
    ("callsctl.serving (the serving pass, its banner)", "callsctl.serving,callsctl.banner"),
    ("at the first call: jwt (+ cryptography, which PyJWT imports when installed)", "jwt"),
    ("at the first call: aioice (+ dnspython, ifaddr: ICE for sessions)", "aioice"),
    ("at the first call: pyOpenSSL (aiortc's DTLS)", "OpenSSL"),
    ("at the first call: pylibsrtp (libsrtp)", "pylibsrtp"),
    ("at the first call: av (PyAV + FFmpeg libraries)", "av"),
    ("at the first call: aiortc (its own modules)", "aiortc"),
    ("at the first call: callsctl's media modules (rtc/peer.py...)",
     "callsctl_sfu.rtc.peer,callsctl_sfu.rtc.rtcp_routing"),
    ("never in the server: typer + click + rich (the CLI; serve parses, then starts over "
     "without them)", "typer,rich.console"),
    ("never in the server: callsctl.serve (the serve command)", "callsctl.serve"),
    ("never in the server: pydantic (typer 0.29's value conversion)", "typer._adapters"),
)

_IMPORT_PROBE = r"""
import importlib, json, sys
def status():
    out = {}
    for line in open('/proc/self/status'):
        key, _, value = line.partition(':')
        if key in ('VmRSS', 'RssAnon', 'RssFile'):
            out[key] = int(value.split()[0])
    return out
rows = [status()]
for step in json.loads(sys.argv[1]):
    for name in step.split(','):
        module, _, call = name.partition(':')
        imported = importlib.import_module(module)
        if call:
            getattr(imported, call)()
    rows.append(status())
print(json.dumps(rows))
"""


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of a process, in KiB (/proc/<pid>/status)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def mapped(pid: int, top: int) -> list[dict[str, Any]]:
    """RSS by what is mapped (/proc/<pid>/smaps): each file, the heap, anonymous memory; KiB."""
    sizes: dict[str, int] = {}
    name = "[anonymous]"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                path = head[5] if len(head) > 5 else "[anonymous]"
                name = _library(path) if path.startswith("/") else path
            elif head and head[0] == "Rss:":
                sizes[name] = sizes.get(name, 0) + int(head[1])
    ranked = sorted(sizes.items(), key=lambda item: -item[1])
    return [{"mapping": k, "rss_kb": v} for k, v in ranked[:top]]


def _library(path: str) -> str:
    """A mapped file by the package it belongs to (av.libs/*.so as one), else its name."""
    if "site-packages/" in path:
        package = path.split("site-packages/", 1)[1].split("/", 1)[0]
        return f"{package}/ (site-packages)"
    return Path(path).name


def import_costs() -> list[dict[str, Any]]:
    """Each import step's VmRSS increment in a fresh interpreter, KiB."""
    modules = [m for _, m in IMPORT_STEPS if m]
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, json.dumps(modules)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=True)
    rows = json.loads(done.stdout)
    out = []
    for index, (label, _module) in enumerate(IMPORT_STEPS):
        now, before = rows[index], rows[index - 1] if index else {k: 0 for k in rows[0]}
        out.append({"step": label, "rss_kb": now["VmRSS"],
                    "added_kb": now["VmRSS"] - before["VmRSS"],
                    "added_anon_kb": now["RssAnon"] - before["RssAnon"],
                    "added_file_kb": now["RssFile"] - before["RssFile"]})
    return out


def media_mapped(pid: int) -> bool:
    """Whether PyAV's FFmpeg libraries or libsrtp are mapped into the process."""
    with open(f"/proc/{pid}/maps") as maps:
        return any("av.libs/" in line or "pylibsrtp/_binding" in line for line in maps)


async def start_serve(workdir: Path, trace: Path | None,
                      native: Path | None = None, repo: Path = REPO,
                      extra: tuple[str, ...] = ()) -> Running:
    """`callsctl serve` on free loopback ports, under tracemalloc when `trace` is given.

    With `native`, heaptrack's preload library records every malloc of the server
    (the native ones tracemalloc cannot see) into that file. `repo` is the checkout
    whose server runs (with this interpreter; its directory comes first on the
    server's sys.path), `extra` more serve options.
    """
    api, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    data_dir = workdir / f"data-{api}"
    log = workdir / f"serve-{api}.log"
    head = [str(BENCH / "traced_serve.py"), str(trace)] if trace else ["-m", "callsctl"]
    env = None
    if native is not None:  # the serving pass under heaptrack (bench/native_serve.py says why)
        head = [str(BENCH / "native_serve.py"), str(_heaptrack_tools()[0]), str(native)]
    with log.open("w") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *head, "serve", "--bind", "127.0.0.1", "--api-port", str(api),
            "--udp-port", str(udp), "--data-dir", str(data_dir), "--log-level", "warning",
            *extra, cwd=repo, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{api}"
    try:
        await _wait_ready(base, process, log)
    except BaseException:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise
    return Running(process, base, f"ws://127.0.0.1:{api}/ws",
                   load_or_create_secret(data_dir), True, log)


async def _snapshot(pid: int, prefix: Path, index: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR2)
    done = prefix.with_name(f"{prefix.name}.{index}.done")
    deadline = time.monotonic() + 60
    while not done.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the traced server wrote no snapshot in 60 s")
        await asyncio.sleep(0.2)
    return tracemalloc.Snapshot.load(str(prefix.with_name(f"{prefix.name}.{index}")))


def _sites(idle: tracemalloc.Snapshot, joined: tracemalloc.Snapshot, sessions: int,
           top: int) -> list[dict[str, Any]]:
    """The allocation sites that grew most from idle to joined, per session."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    joined, idle = joined.filter_traces(ignore), idle.filter_traces(ignore)
    out = []
    for group in ("filename", "lineno"):
        diff = joined.compare_to(idle, group)
        for stat in [d for d in diff if d.size_diff > 0][:top]:
            frame = stat.traceback[0]
            site = _short(frame.filename) + (f":{frame.lineno}" if group == "lineno" else "")
            out.append({"by": group, "site": site,
                        "bytes_per_session": round(stat.size_diff / max(1, sessions)),
                        "blocks_per_session": round(stat.count_diff / max(1, sessions), 1)})
    return out


def _short(filename: str) -> str:
    """A source path as `package/module.py` (site-packages, the stdlib or this repo)."""
    match = re.search(r"(?:site-packages|python3\.\d+)/(.+)$", filename)
    if match:
        return match.group(1)
    return filename.split(str(REPO) + "/", 1)[-1]


def _heaptrack_tools() -> tuple[Path, Path]:
    """(preload library, raw-data interpreter) of the installed heaptrack."""
    script = shutil.which("heaptrack")
    if script is None:
        raise SystemExit("--native needs heaptrack: apt-get install heaptrack")
    lib = Path(script).resolve().parent.parent / "lib" / "heaptrack"
    return lib / "libheaptrack_preload.so", lib / "libexec" / "heaptrack_interpret"


# A native allocation site is named by the outermost call into a native library
# through cffi (pyOpenSSL's and pylibsrtp's bindings: _cffi_f_SSL_read) when there
# is one, and the function that called malloc. Stacks whose caller is Python's own
# allocator are Python objects, which --trace reports by their Python line.
_PYTHON_ALLOCATORS = ("_PyObject_Malloc", "_PyObject_Calloc", "_PyObject_Realloc",
                      "PyMem_", "_PyMem_", "new_arena", "_PyBytes_Resize")
_MALLOC = ("CRYPTO_malloc", "CRYPTO_zalloc", "CRYPTO_realloc", "CRYPTO_clear_realloc",
           "srtp_crypto_alloc", "malloc", "calloc", "realloc", "0x")


def native_sites(raw: Path, sessions: int, top: int) -> dict[str, Any]:
    """Native heap per session by allocation site, from heaptrack's raw record.

    A stack's cost is what it holds when the heap is at its peak (heaptrack's
    "peak" cost), reached while every session is joined. The idle server's own
    allocations (imports, OpenSSL's providers, the CA store) are in that peak
    too, so only sites that grow with the sessions mean anything per session.
    """
    interpret = _heaptrack_tools()[1]
    data = raw.with_suffix(".data")
    with raw.open("rb") as source, data.open("wb") as out:
        subprocess.run([str(interpret)], stdin=source, stdout=out, check=True, timeout=600)
    stacks = raw.with_suffix(".stacks")
    subprocess.run(["heaptrack_print", "-f", str(data), "--print-peaks", "0",
                    "--print-allocators", "0", "--print-temporary", "0", "--print-leaks", "0",
                    "--print-flamegraph", str(stacks), "--flamegraph-cost-type", "peak"],
                   check=True, timeout=600, capture_output=True)
    sites: dict[str, int] = {}
    python = 0
    for line in stacks.read_text(errors="replace").splitlines():
        stack, _, cost = line.rpartition(" ")
        frames = [f.split(" (")[0] for f in stack.split(";") if f]
        if not frames or not cost.isdigit():
            continue
        callers = [f for f in frames if not f.startswith(_MALLOC)]
        if callers and callers[-1].startswith(_PYTHON_ALLOCATORS):
            python += int(cost)
            continue
        entry = next((f for f in frames if f.startswith(("_cffi_f_", "_cffi_d_"))), None)
        site = f"{entry[len('_cffi_f_'):]} > " if entry else ""
        site += callers[-1] if callers else frames[-1]
        sites[site] = sites.get(site, 0) + int(cost)
    ranked = sorted(sites.items(), key=lambda item: -item[1])[:top]
    return {"native_total_kb": round(sum(sites.values()) / 1024),
            "python_via_malloc_kb": round(python / 1024),
            "native_sites": [{"site": k, "bytes_per_session": round(v / max(1, sessions))}
                             for k, v in ranked]}


async def _malloc_trim(pid: int) -> None:
    """glibc's malloc_trim(0) in the server, through gdb: what RSS is free heap kept, not live."""
    gdb = await asyncio.create_subprocess_exec(
        "gdb", "-p", str(pid), "-batch", "-ex", "call (int) malloc_trim(0)",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(gdb.wait(), 60)


async def _first_join(running: Running) -> float:
    """One participant joins a call of its own and connects media; seconds it took."""
    secret = running.secret
    assert secret is not None
    person = Participant(running.ws_url, issue_token(secret, "memory-first", "first", 3600),
                         "memory-first", "first", tone=440.0)
    started = time.monotonic()
    try:
        await person.join(timeout=60)
        await person.wait_connected(60)
        took = time.monotonic() - started
        await asyncio.sleep(SETTLE_S)
    finally:
        await person.close()
    await asyncio.sleep(SETTLE_S)  # its session gone: what stays is the loaded stack
    return took


async def sessions(size: int, unmuted: int, window: float, workdir: Path,
                   trace: bool, top: int, trim: bool = False,
                   native: bool = False, repo: Path = REPO, extra: tuple[str, ...] = (),
                   server: str = "this checkout",
                   data_channel: bool = False) -> dict[str, Any]:
    """One server, one call of `size` audio participants: RSS idle, after one join, joined."""
    # A directory of this run's own: several runs of one size (--before, --data-channel
    # both) must not read each other's snapshots or heaptrack records.
    own = Path(tempfile.mkdtemp(prefix=f"run-{size}-", dir=workdir))
    prefix = own / f"trace-{size}" if trace else None
    raw = own / f"heaptrack-{size}.raw" if native else None
    running = await start_serve(workdir, prefix, raw, repo, extra)
    snapshots: list[tracemalloc.Snapshot] = []
    readings: dict[str, dict[str, int]] = {}
    try:
        pid = running.process.pid
        await asyncio.sleep(SETTLE_S)
        readings["idle"] = proc_status(pid)
        idle_media = media_mapped(pid)
        maps = mapped(pid, 12)
        first_join_s = await _first_join(running)
        readings["first"] = proc_status(pid)
        first_media = media_mapped(pid)
        if prefix is not None:
            snapshots.append(await _snapshot(pid, prefix, 1))
        secret = running.secret
        assert secret is not None
        join_s = max(1.0, size / JOIN_RATE)

        async def on_window(phase: str) -> None:
            readings[phase] = proc_status(pid)
            if phase == "end" and trim:
                await _malloc_trim(pid)
                readings["trimmed"] = proc_status(pid)
            if phase == "end" and prefix is not None:
                snapshots.append(await _snapshot(pid, prefix, 2))

        config = LoadConfig(ws_url=running.ws_url,
                            token_for=lambda call, user: issue_token(secret, call, user, 3600),
                            calls=1, users_per_call=size, unmuted=unmuted,
                            duration=join_s + 15 + window + (60 if trace else 5),
                            join_duration=join_s, window=window, call_prefix="memory",
                            local_address="127.0.0.1", settle_timeout=15, join_timeout=60,
                            data_channel=data_channel)
        report = (await LoadTest(config, on_window=on_window).run()).to_dict()
    finally:
        await running.stop()
    joined = report["participants"]["joined"]
    idle, first, end = readings["idle"], readings["first"], readings.get("end")
    result: dict[str, Any] = {
        "server": server, "size": size, "unmuted": unmuted, "joined": joined,
        "failed": report["participants"]["failed"], "traced": trace or native,
        "data_channel": data_channel,
        "data_channels_open": report["participants"].get("data_channels_open"),
        "rss_idle_kb": idle["VmRSS"], "anon_idle_kb": idle["RssAnon"],
        "file_idle_kb": idle["RssFile"], "media_mapped_idle": idle_media,
        "idle_mappings": maps,
        "rss_first_join_kb": first["VmRSS"], "first_join_s": round(first_join_s, 3),
        "media_mapped_first_join": first_media,
        "rss_joined_kb": end["VmRSS"] if end else None,
        "kb_per_session": round((end["VmRSS"] - first["VmRSS"]) / joined, 1)
        if end and joined else None,
        "anon_kb_per_session": round((end["RssAnon"] - first["RssAnon"]) / joined, 1)
        if end and joined else None,
        "notes": report["notes"],
    }
    if raw is not None and joined:
        result.update(native_sites(raw, joined, top))
    trimmed = readings.get("trimmed")
    if trimmed and joined:
        result["trimmed_kb_per_session"] = round((trimmed["VmRSS"] - first["VmRSS"]) / joined,
                                                 1)
    if len(snapshots) == 2 and joined:
        result["sites"] = _sites(snapshots[0], snapshots[1], joined, top)
        result["traced_kb_per_session"] = round(
            sum(s.size for s in snapshots[1].statistics("filename"))
            - sum(s.size for s in snapshots[0].statistics("filename"))) / joined / 1024
    return result


def render(imports: list[dict[str, Any]], results: list[dict[str, Any]], command: str,
           host: str, label: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    traced = any(r["traced"] for r in results)
    where = " (heaptrack)" if any(r.get("native_sites") for r in results) else " (tracemalloc)"
    lines = [f"### Memory: {label}{', where it goes' + where if traced else ''}", "",
             f"Command: `{command}`  ",
             f"Measured: {when} on {host}.", ""]
    if imports:
        lines += ["Import floor (a fresh interpreter importing what serve imports, in order):",
                  "", "| step | VmRSS after | added | of it anonymous | of it file-backed |",
                  "|---|---:|---:|---:|---:|"]
        for row in imports:
            lines.append(f"| {row['step']} | {row['rss_kb'] / 1024:.1f} MB | "
                         f"{row['added_kb'] / 1024:.1f} MB | {row['added_anon_kb'] / 1024:.1f} MB"
                         f" | {row['added_file_kb'] / 1024:.1f} MB |")
        lines.append("")
    plain = [r for r in results if not r["traced"]]
    if plain:
        lines += ["| server | participants | unmuted | joined | RSS idle (anon + file) "
                  "| media stack mapped idle | RSS after the first join (its join, s) "
                  "| RSS joined | RSS / session | anon / session |",
                  "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for r in plain:
            joined = f"{r['rss_joined_kb'] / 1024:.1f} MB" if r["rss_joined_kb"] else "-"
            lines.append(
                f"| {r.get('server', '-')} | {r['size']} | {r['unmuted']} | {r['joined']} | "
                f"**{r['rss_idle_kb'] / 1024:.1f} MB** ({r['anon_idle_kb'] / 1024:.1f} + "
                f"{r['file_idle_kb'] / 1024:.1f}) | "
                f"{'yes' if r.get('media_mapped_idle') else 'no'} | "
                f"{r['rss_first_join_kb'] / 1024:.1f} MB ({r['first_join_s']}) | "
                f"{joined} | **{r['kb_per_session']} KB** | {r['anon_kb_per_session']} KB |")
        lines += ["", "RSS / session = (RSS joined - RSS after the first join) / joined: the "
                  "first join's one-off load of the media stack is not spread over them."]
    shown: set[str] = set()
    for first in plain:  # one table per server: its first run
        if first.get("server", "-") in shown:
            continue
        shown.add(first.get("server", "-"))
        lines += ["", f"The idle server's RSS by mapping ({first.get('server', '-')}; "
                  f"/proc/<pid>/smaps, the {first['size']}-participant run; anonymous = "
                  "Python's heap, malloc):", "", "| mapping | RSS |", "|---|---:|"]
        lines += [f"| {m['mapping']} | {m['rss_kb'] / 1024:.1f} MB |"
                  for m in first["idle_mappings"]]
    for r in results:
        if r.get("native_sites"):
            lines += ["", f"Native heap, {r['size']} participants, by site (heaptrack, what each "
                      f"holds at the heap's peak; {r['native_total_kb'] / 1024:.1f} MB native in "
                      f"all, the idle server's included; {r['python_via_malloc_kb'] / 1024:.1f} "
                      f"MB more are Python objects, left to --trace):", "",
                      "| native entry > allocating function | bytes / session |", "|---|---:|"]
            lines += [f"| {s['site']} | {s['bytes_per_session']} |" for s in r["native_sites"]]
        if not r.get("sites"):
            continue
        for group, title in (("filename", "by file"), ("lineno", "by line")):
            lines += ["", f"Where it goes, {r['size']} participants, {title} (tracemalloc; the "
                      f"traced Python heap grew {r['traced_kb_per_session']:.1f} KB / session):",
                      "", "| allocation site | bytes / session | blocks / session |",
                      "|---|---:|---:|"]
            lines += [f"| {s['site']} | {s['bytes_per_session']} | {s['blocks_per_session']} |"
                      for s in r["sites"] if s["by"] == group]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    imports = [] if args.no_imports else import_costs()
    results = []
    extra = ("--preload-media",) if args.preload_media else ()
    servers: list[tuple[str, Path, tuple[str, ...]]] = []
    if args.before is not None:  # the other checkout knows no --preload-media: as it was
        servers.append((f"before ({args.before.name})", args.before, ()))
    servers.append(("after" + (", --preload-media" if extra else "")
                    if args.before is not None else
                    "this checkout" + (", --preload-media" if extra else ""), REPO, extra))
    channels = {"off": (False,), "on": (True,), "both": (False, True)}[args.data_channel]
    runs = [(name + (", data channel" if channel else ""), repo, options, channel)
            for name, repo, options in servers for channel in channels]
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        for size in args.sizes:
            for name, repo, options, channel in runs:
                result = await sessions(size, args.unmuted, args.window, Path(tmp),
                                        args.trace, args.top, args.malloc_trim, args.native,
                                        repo, options, name, channel)
                if not args.json:
                    print(json.dumps({k: v for k, v in result.items() if k != "sites"}),
                          flush=True)
                results.append(result)
    return {"imports": imports, "sessions": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200],
                        help=f"participants per run, 1..{MAX_SIZE} (default 50 200)")
    parser.add_argument("--unmuted", type=int, default=2, help="unmuted participants (default 2)")
    parser.add_argument("--window", type=float, default=5.0,
                        help="steady window before the joined reading, seconds (default 5)")
    parser.add_argument("--trace", action="store_true",
                        help="run the server under tracemalloc and list the sites that grew")
    parser.add_argument("--native", action="store_true",
                        help="run the server under heaptrack: native (malloc) sites per session")
    parser.add_argument("--top", type=int, default=20, help="sites listed (--trace, --native)")
    parser.add_argument("--malloc-trim", action="store_true",
                        help="also read RSS after glibc malloc_trim(0) in the server (gdb)")
    parser.add_argument("--no-imports", action="store_true", help="skip the import floor")
    parser.add_argument("--before", type=Path,
                        help="also measure the server of this other checkout (same run, first)")
    parser.add_argument("--preload-media", action="store_true",
                        help="run this checkout's server with --preload-media")
    parser.add_argument("--data-channel", choices=("off", "on", "both"), default="off",
                        help="participants also open the calls-dc data channel like real "
                             "clients: off (default, as the recorded figures), on, or both "
                             "(each size and server without, then with)")
    parser.add_argument("--json", action="store_true", help="print one JSON document only")
    parser.add_argument("--write", type=Path, help="update this results file in place")
    parser.add_argument("--label", default="after", help="the section's name (default after)")
    args = parser.parse_args()
    if any(not 1 <= size <= MAX_SIZE for size in args.sizes):
        parser.error(f"--sizes must be 1..{MAX_SIZE}")
    if not 0 <= args.unmuted <= min(args.sizes):
        parser.error("--unmuted must be 0..the smallest size")
    if not 1 <= args.window <= 60 or not 1 <= args.top <= 200:
        parser.error("--window must be 1..60 seconds and --top 1..200")
    if args.native and args.trace:
        parser.error("--native and --trace each slow the server: use one at a time")
    if args.native and shutil.which("heaptrack") is None:
        parser.error("--native runs the server under heaptrack: apt-get install heaptrack")
    if args.malloc_trim and shutil.which("gdb") is None:
        parser.error("--malloc-trim runs malloc_trim through gdb: apt-get install gdb")
    document = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(document, indent=2))
        return
    command = "python bench/memory.py " + shlex.join(
        a for a in sys.argv[1:] if a != "--write" and not a.endswith(".md"))
    body = render(document["imports"], document["sessions"], command, machine(), args.label)
    print(body)
    if args.write:
        key = "-".join(re.findall(r"[a-z0-9]+", args.label.lower()))
        kind = "-trace" if args.trace else "-native" if args.native else ""
        kind += "-dc" if args.data_channel != "off" else ""
        write_section(args.write, f"memory-{key}{kind}", body)


if __name__ == "__main__":
    main()
