"""`callsctl tune`: the engine on fake /proc trees, the CLI as a user runs it, and the
real kernel (as root: apply and revert; as an unprivileged user: the refusal)."""

from __future__ import annotations

import errno
import json
import os
import pty
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from callsctl_sfu import tuning
from callsctl_sfu.tuning import MIB, SETTINGS, Change, TuneError
from tests.support.helpers import REPO, free_port, have, is_root, run_cli

pytestmark = pytest.mark.timeout(60)

REAL_SYSCTL = Path("/proc/sys")
NAMES = [s.name for s in SETTINGS]


# --------------------------------------------------------------------------- fake trees


def _hex4(addr: str) -> str:
    """An IPv4 address as /proc/net/udp prints it (one 32-bit word in host order)."""
    return f"{struct.unpack('=I', socket.inet_aton(addr))[0]:08X}"


def _hex6(addr: str) -> str:
    packed = socket.inet_pton(socket.AF_INET6, addr)
    return "".join(f"{struct.unpack('=I', packed[i:i + 4])[0]:08X}" for i in range(0, 16, 4))


def _udp_line(slot: int, local_hex: str, port: int, drops: int, rx: int = 0) -> str:
    return (f"{slot:5d}: {local_hex}:{port:04X} {'0' * len(local_hex)}:0000 07 "
            f"00000000:{rx:08X} 00:00000000 00000000     0        0 {1000 + slot} 2 "
            f"0000000000000000 {drops}")


class Tree:
    """A fake sysctl root, proc root, sysctl.d dir and data dir under tmp_path."""

    def __init__(self, base: Path, values: dict[str, int]) -> None:
        self.sysctl = base / "sys"
        self.proc = base / "proc"
        self.sysctl_d = base / "sysctl.d"
        self.data = base / "data"
        self.sysctl_d.mkdir(parents=True)
        for name, value in values.items():
            self.set(name, value)
        net = self.proc / "net"
        net.mkdir(parents=True)
        (net / "snmp").write_text(
            "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
            "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors "
            "InCsumErrors IgnoredMulti MemErrors\n"
            "Udp: 1000 3 42 900 40 2 0 0 0\n"
            "UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors "
            "InCsumErrors IgnoredMulti MemErrors\nUdpLite: 0 0 9 0 9 9 0 0 0\n"
        )
        (net / "snmp6").write_text(
            "Ip6InReceives                   \t5\nUdp6InErrors                    \t7\n"
            "Udp6RcvbufErrors                \t5\nUdp6SndbufErrors                \t0\n"
        )
        header = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when "
                  "retrnsmt   uid  timeout inode ref pointer drops\n")
        (net / "udp").write_text(header + _udp_line(0, _hex4("127.0.0.1"), 8443, 17, 512)
                                 + "\n" + _udp_line(1, _hex4("0.0.0.0"), 53, 0) + "\n")
        (net / "udp6").write_text(header + _udp_line(2, _hex6("::1"), 8443, 3) + "\n")

    def set(self, name: str, value: int) -> None:
        path = tuning.sysctl_path(self.sysctl, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")

    def get(self, name: str) -> int | None:
        return tuning.read_sysctl(self.sysctl, name)

    def values(self) -> dict[str, int | None]:
        return {name: self.get(name) for name in NAMES}

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return run_cli("tune", "--sysctl-root", str(self.sysctl), "--proc-root",
                       str(self.proc), "--sysctl-d", str(self.sysctl_d), "--data-dir",
                       str(self.data), *args, **kwargs)


LOW = {"net.core.rmem_max": 212992, "net.core.wmem_max": 32 * MIB,
       "net.core.optmem_max": 20480}


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """rmem/optmem below the recommendation, wmem already above it."""
    return Tree(tmp_path, LOW)


def _statuses(tree: Tree) -> list[tuning.SettingStatus]:
    return tuning.read_settings(tree.sysctl)


# --------------------------------------------------------------------------- engine


def test_settings_list_is_the_guides_three_with_reasons() -> None:
    assert NAMES == ["net.core.rmem_max", "net.core.wmem_max", "net.core.optmem_max"]
    assert all(s.recommended == 16777216 for s in SETTINGS)
    assert all(len(s.reason) > 30 for s in SETTINGS)
    assert tuning.DEFAULT_UDP_BUFFER_SIZE == 16 * 1024 * 1024


def test_show_statuses_and_never_lower_plan(tree: Tree) -> None:
    tree.set("net.core.optmem_max", 16 * MIB)
    by_name = {st.setting.name: st for st in _statuses(tree)}
    assert by_name["net.core.rmem_max"].status == "LOW"
    assert by_name["net.core.wmem_max"].status == "OK"
    assert by_name["net.core.optmem_max"].status == "OK"
    plan = tuning.plan_apply(by_name.values())
    assert plan == [Change("net.core.rmem_max", 212992, 16 * MIB)]


def test_missing_setting_is_reported_not_planned(tree: Tree) -> None:
    tuning.sysctl_path(tree.sysctl, "net.core.optmem_max").unlink()
    statuses = _statuses(tree)
    assert [st.status for st in statuses] == ["LOW", "OK", "MISSING"]
    assert tuning.missing_settings(statuses) == ["net.core.optmem_max"]
    with pytest.raises(TuneError, match="belongs to the host"):
        tuning.preflight_write(tree.sysctl, ["net.core.optmem_max"])


def test_apply_raises_low_values_and_saves_previous(tree: Tree) -> None:
    result = tuning.apply(tuning.plan_apply(_statuses(tree)), tree.data, tree.sysctl)
    assert tree.values() == {"net.core.rmem_max": 16 * MIB, "net.core.wmem_max": 32 * MIB,
                             "net.core.optmem_max": 16 * MIB}
    assert result.state_file == tree.data / tuning.STATE_FILE_NAME
    saved = json.loads(result.state_file.read_text())
    assert saved["settings"] == {
        "net.core.rmem_max": {"previous": 212992, "applied": 16 * MIB},
        "net.core.optmem_max": {"previous": 20480, "applied": 16 * MIB},
    }
    assert "callsctl tune" in saved["written_by"]
    # Nothing left to do the second time, and the record still points at the originals.
    assert tuning.plan_apply(_statuses(tree)) == []
    assert tuning.load_state(tree.data)["net.core.rmem_max"]["previous"] == 212992


def test_second_apply_keeps_the_first_previous_value() -> None:
    first = tuning.merged_state(None, [Change("net.core.rmem_max", 100, 16 * MIB)])
    again = tuning.merged_state(first, [Change("net.core.rmem_max", 200, 16 * MIB),
                                        Change("net.core.optmem_max", 300, 16 * MIB)])
    assert again == {"net.core.rmem_max": {"previous": 100, "applied": 16 * MIB},
                     "net.core.optmem_max": {"previous": 300, "applied": 16 * MIB}}


def test_revert_restores_exactly_and_removes_files(tree: Tree) -> None:
    before = tree.values()
    text = tuning.render_persist(tuning.persist_values(_statuses(tree)))
    tuning.apply(tuning.plan_apply(_statuses(tree)), tree.data, tree.sysctl, text,
                 tree.sysctl_d)
    assert tuning.persist_path(tree.sysctl_d).exists()
    plan = tuning.plan_revert(tree.data, tree.sysctl, tree.sysctl_d)
    assert {c.name for c in plan.changes} == {"net.core.rmem_max", "net.core.optmem_max"}
    tuning.revert(plan, tree.data, tree.sysctl, tree.sysctl_d)
    assert tree.values() == before
    assert not tuning.persist_path(tree.sysctl_d).exists()
    assert tuning.load_state(tree.data) is None
    assert tuning.plan_revert(tree.data, tree.sysctl, tree.sysctl_d).empty


def test_revert_leaves_alone_what_someone_else_changed_since(tree: Tree) -> None:
    tuning.apply(tuning.plan_apply(_statuses(tree)), tree.data, tree.sysctl)
    tree.set("net.core.rmem_max", 64 * MIB)  # an operator raised it by hand afterwards
    plan = tuning.plan_revert(tree.data, tree.sysctl, tree.sysctl_d)
    assert [c.name for c in plan.changes] == ["net.core.optmem_max"]
    assert plan.skipped == [{"name": "net.core.rmem_max", "current": 64 * MIB,
                             "previous": 212992, "applied": 16 * MIB}]
    tuning.revert(plan, tree.data, tree.sysctl, tree.sysctl_d)
    assert tree.get("net.core.rmem_max") == 64 * MIB
    assert tree.get("net.core.optmem_max") == 20480


def test_partial_failure_rolls_back_everything(tree: Tree,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = tuning._write_int

    def write(path: Path, value: int) -> None:
        if path.name == "optmem_max" and value == 16 * MIB:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_write(path, value)

    monkeypatch.setattr(tuning, "_write_int", write)
    monkeypatch.setattr(tuning.os, "geteuid", lambda: 1000)
    before = tree.values()
    with pytest.raises(TuneError) as info:
        tuning.apply(tuning.plan_apply(_statuses(tree)), tree.data, tree.sysctl)
    assert "needs root" in info.value.message and "nothing was changed" in info.value.message
    assert not info.value.partial
    assert tree.values() == before  # rmem_max was written first, then put back
    assert tuning.load_state(tree.data) is None  # no record of an apply that did not happen


def test_kernel_ignoring_a_write_counts_as_failure(tree: Tree,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = tuning._write_int

    def clamp(path: Path, value: int) -> None:
        real_write(path, min(value, MIB) if path.name == "optmem_max" else value)

    monkeypatch.setattr(tuning, "_write_int", clamp)
    before = tree.values()
    with pytest.raises(TuneError, match="did not take net.core.optmem_max"):
        tuning.write_all_or_none(tree.sysctl, tuning.plan_apply(_statuses(tree)))
    assert tree.values() == before


def test_failed_rollback_is_reported_and_record_kept(tree: Tree,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = tuning._write_int

    def write(path: Path, value: int) -> None:
        if path.name == "optmem_max" or (path.name == "rmem_max" and value != 16 * MIB):
            raise OSError(errno.EIO, "Input/output error")
        real_write(path, value)

    monkeypatch.setattr(tuning, "_write_int", write)
    with pytest.raises(TuneError) as info:
        tuning.apply(tuning.plan_apply(_statuses(tree)), tree.data, tree.sysctl)
    assert info.value.partial
    assert "rollback FAILED, still changed: net.core.rmem_max" in info.value.message
    # The record survives so `--revert` can still put rmem_max back later.
    assert tuning.load_state(tree.data)["net.core.rmem_max"]["previous"] == 212992


def test_persist_file_contents(tree: Tree) -> None:
    text = tuning.render_persist(tuning.persist_values(_statuses(tree)))
    assert text.startswith("# Written by `callsctl tune --persist`")
    assert "# Why:" in text and "callsctl tune --revert" in text
    assert "RcvbufErrors" in text  # each setting carries its reason
    # Never lowers: wmem_max was already 32 MiB, so that is what boots.
    assert tuning.parse_sysctl_conf(text) == {"net.core.rmem_max": "16777216",
                                              "net.core.wmem_max": str(32 * MIB),
                                              "net.core.optmem_max": "16777216"}
    path = tuning.write_persist(tree.sysctl_d, text)
    assert path == tree.sysctl_d / "99-callsctl.conf" and path.read_text() == text
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert tuning.remove_persist(tree.sysctl_d) and not tuning.remove_persist(tree.sysctl_d)


def test_persist_failure_undoes_the_apply(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(sysctl_d: Path, text: str) -> Path:
        raise TuneError("cannot write 99-callsctl.conf: No space left on device")

    monkeypatch.setattr(tuning, "write_persist", broken)
    before = tree.values()
    with pytest.raises(TuneError, match="No space left.*nothing was changed"):
        tuning.apply(tuning.plan_apply(_statuses(tree)), tree.data, tree.sysctl, "x\n",
                     tree.sysctl_d)
    assert tree.values() == before
    assert tuning.load_state(tree.data) is None


def test_missing_sysctl_d_fails_before_anything_changes(tree: Tree) -> None:
    before = tree.values()
    with pytest.raises(TuneError, match="survive reboot"):
        tuning.apply(tuning.plan_apply(_statuses(tree)), tree.data, tree.sysctl, "x\n",
                     tree.sysctl_d / "nope")
    assert tree.values() == before


@pytest.mark.parametrize(("code", "euid", "needle"), [
    (errno.EACCES, 1000, "needs root (uid 0, or CAP_NET_ADMIN"),
    (errno.EPERM, 0, "not in the host's network namespace"),
    (errno.EROFS, 0, "read-only file system, as in a container"),
    (errno.ENOENT, 0, "set it on the host"),
])
def test_write_errors_name_the_privilege_or_place(code: int, euid: int, needle: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning.os, "geteuid", lambda: euid)
    message = tuning._explain_write_error(Path("/proc/sys/net/core/rmem_max"),
                                          "net.core.rmem_max", OSError(code, "x"))
    assert needle in message and "\n" not in message


def test_evidence_readers(tree: Tree) -> None:
    snmp = tuning.read_snmp_udp(tree.proc)
    assert snmp["udp"] == {"InErrors": 42, "RcvbufErrors": 40, "SndbufErrors": 2}
    assert snmp["udp6"] == {"InErrors": 7, "RcvbufErrors": 5, "SndbufErrors": 0}
    sockets = {s.local: s for s in tuning.read_udp_sockets(tree.proc)}
    assert sockets["127.0.0.1:8443"].drops == 17 and sockets["127.0.0.1:8443"].rx_queue == 512
    assert sockets["0.0.0.0:53"].drops == 0
    assert sockets["[::1]:8443"].drops == 3
    assert tuning.read_snmp_udp(tree.proc / "absent") == {}
    assert tuning.read_udp_sockets(tree.proc / "absent") == []
    soft, hard = tuning.nofile_limit()
    assert soft != 0 and hard != 0


def test_evidence_readers_on_the_real_proc() -> None:
    assert "RcvbufErrors" in tuning.read_snmp_udp()["udp"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert any(s.local == f"127.0.0.1:{port}" for s in tuning.read_udp_sockets())
    rcv, snd = tuning.probe_udp_buffer(64 * 1024)
    assert rcv >= 64 * 1024 and snd >= 64 * 1024


def test_kernel_caps_udp_buffer_compares_the_doubled_figure() -> None:
    want = tuning.DEFAULT_UDP_BUFFER_SIZE
    assert not tuning.kernel_caps_udp_buffer(want, 2 * want)
    assert tuning.kernel_caps_udp_buffer(want, want)  # the kernel capped it at half
    assert tuning.kernel_caps_udp_buffer(want, 2 * 4 * MIB)
    assert tuning.udp_buffer_warning(want, 2 * want, 2 * want) is None
    warning = tuning.udp_buffer_warning(want, 2 * 4 * MIB, 2 * want)
    assert warning is not None and "callsctl tune --apply" in warning
    assert "SO_RCVBUF 4 MiB (net.core.rmem_max)" in warning and "SO_SNDBUF" not in warning


# --------------------------------------------------------------------------- CLI


class _VersionHandler(BaseHTTPRequestHandler):
    body: bytes = b"{}"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status = 200 if self.path == "/version" else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_serve() -> Iterator[str]:
    """A loopback stand-in for a running serve whose kernel capped it at 4 MiB."""
    handler = type("H", (_VersionHandler,), {"body": json.dumps({
        "version": "0.1.0",
        "udp_socket": {"requested_bytes": 16 * MIB, "rcvbuf_bytes": 8 * MIB,
                       "sndbuf_bytes": 32 * MIB},
    }).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_cli_show_json_with_evidence(tree: Tree, fake_serve: str) -> None:
    proc = tree.cli("--json", "--server", fake_serve)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert [(s["name"], s["status"]) for s in report["settings"]] == [
        ("net.core.rmem_max", "LOW"), ("net.core.wmem_max", "OK"),
        ("net.core.optmem_max", "LOW")]
    ev = report["evidence"]
    assert ev["snmp"]["udp"]["RcvbufErrors"] == 40
    assert ev["socket_drops"]["total"] == 20
    assert {s["local"] for s in ev["socket_drops"]["sockets"]} == {"127.0.0.1:8443",
                                                                   "[::1]:8443"}
    assert ev["server"]["reachable"] and ev["server"]["rcvbuf_capped"]
    assert ev["server"]["sndbuf_capped"] is False
    assert set(ev["nofile"]) >= {"soft", "hard"}
    assert report["persist_file"]["exists"] is False
    assert report["saved_values"]["exists"] is False


def test_cli_show_table_without_server(tree: Tree) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = tree.cli("--server", dead)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("net.core.rmem_max", "LOW", "OK", "RcvbufErrors 40", "open-files limit",
                   "no server answered", "within 1 s", "callsctl tune --apply"):
        assert needle in out, needle


def test_cli_refuses_without_yes_when_stdin_is_not_a_tty(tree: Tree) -> None:
    before = tree.values()
    proc = tree.cli("--apply", input="")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "callsctl: error: refusing to change kernel settings without confirmation: stdin is "
        "not a terminal; pass --yes (or --dry-run to only look)"]
    assert tree.values() == before


def test_cli_dry_run_changes_nothing(tree: Tree) -> None:
    before = tree.values()
    proc = tree.cli("--apply", "--persist", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "net.core.rmem_max: 212992 (208 KiB) -> 16777216 (16 MiB)" in proc.stdout
    assert "never lowered" in proc.stdout and "Dry run: nothing changed." in proc.stdout
    assert tree.values() == before and not list(tree.sysctl_d.iterdir())
    data = json.loads(tree.cli("--dry-run", "--json").stdout)
    assert [c["name"] for c in data["changes"]] == ["net.core.rmem_max",
                                                    "net.core.optmem_max"]
    assert data["done"] is False and not tree.data.exists()


def test_cli_apply_persist_then_revert(tree: Tree) -> None:
    before = tree.values()
    proc = tree.cli("--apply", "--persist", "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["done"] and result["persist"]["write"]
    assert tree.values() == {"net.core.rmem_max": 16 * MIB, "net.core.wmem_max": 32 * MIB,
                             "net.core.optmem_max": 16 * MIB}
    conf = (tree.sysctl_d / "99-callsctl.conf").read_text()
    assert "callsctl tune --persist" in conf and "net.core.rmem_max = 16777216" in conf
    shown = json.loads(tree.cli("--json", "--server", "http://127.0.0.1:9").stdout)
    assert shown["ok"] and shown["persist_file"]["exists"] and shown["saved_values"]["exists"]

    again = tree.cli("--apply", "--persist", "--yes")
    assert again.returncode == 0 and "Nothing to change." in again.stdout

    proc = tree.cli("--revert", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "Reverted." in proc.stdout
    assert tree.values() == before
    assert not (tree.sysctl_d / "99-callsctl.conf").exists()
    nothing = tree.cli("--revert")
    assert nothing.returncode == 0 and "Nothing to revert" in nothing.stdout


def test_cli_persist_only_writes_the_file(tree: Tree) -> None:
    before = tree.values()
    proc = tree.cli("--persist", "-y")
    assert proc.returncode == 0, proc.stderr
    assert tree.values() == before
    assert (tree.sysctl_d / "99-callsctl.conf").exists()


def test_cli_usage_and_missing_setting_errors(tree: Tree) -> None:
    proc = tree.cli("--revert", "--apply")
    assert proc.returncode == 2 and "cannot be combined" in proc.stderr
    tuning.sysctl_path(tree.sysctl, "net.core.wmem_max").unlink()
    before = tree.values()
    proc = tree.cli("--apply", "--yes")
    assert proc.returncode == 1
    assert "net.core.wmem_max does not exist here" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert tree.values() == before


def test_cli_interactive_prompt_no_means_nothing_changes(tree: Tree) -> None:
    """With a terminal the command asks; answering no changes nothing."""
    before = tree.values()
    leader, follower = pty.openpty()
    cmd = [sys.executable, "-m", "callsctl", "tune", "--apply", "--sysctl-root",
           str(tree.sysctl), "--sysctl-d", str(tree.sysctl_d), "--data-dir", str(tree.data)]
    proc = subprocess.Popen(cmd, stdin=follower, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, text=True)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 20
    try:
        # The prompt goes to stderr (a pipe here); wait for the process to block on the tty.
        while b"?" not in seen and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stderr], [], [], 0.2)
            if ready:
                seen += os.read(proc.stderr.fileno(), 1024)
        os.write(leader, b"n\n")
        _, err = proc.communicate(timeout=20)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    assert b"Apply these changes?" in seen
    assert proc.returncode == 1 and "aborted; nothing was changed" in err
    assert tree.values() == before


# --------------------------------------------------------------------------- real kernel


def _real_values() -> dict[str, int | None]:
    return {name: tuning.read_sysctl(REAL_SYSCTL, name) for name in NAMES}


def _restore_real(values: dict[str, int | None]) -> None:
    for name, value in values.items():
        if value is not None and tuning.read_sysctl(REAL_SYSCTL, name) != value:
            tuning._write_int(tuning.sysctl_path(REAL_SYSCTL, name), value)


@pytest.mark.root
def test_root_apply_and_revert_on_the_real_kernel(tmp_path: Path) -> None:
    if not is_root():
        pytest.skip("needs root to write /proc/sys/net/core/*")
    original = _real_values()
    if None in original.values():
        pytest.skip(f"net.core settings missing from /proc/sys here: {original}")
    try:
        tuning.preflight_write(REAL_SYSCTL, NAMES)
    except TuneError as exc:
        pytest.skip(f"/proc/sys/net/core is not writable in this environment: {exc.message}")
    sysctl_d = tmp_path / "sysctl.d"  # never touch the host's /etc/sysctl.d from a test
    sysctl_d.mkdir()
    common = ("--data-dir", str(tmp_path / "data"), "--sysctl-d", str(sysctl_d))
    try:
        # Make sure apply has something to raise even on a host that is already tuned.
        for name, value in original.items():
            if value is not None and value >= 16 * MIB:
                tuning._write_int(tuning.sysctl_path(REAL_SYSCTL, name), 4 * MIB)
        start = _real_values()
        proc = run_cli("tune", "--apply", "--persist", "--yes", *common)
        assert proc.returncode == 0, proc.stderr
        assert _real_values() == {name: 16 * MIB for name in NAMES}
        rcv, snd = tuning.probe_udp_buffer(tuning.DEFAULT_UDP_BUFFER_SIZE)
        assert not tuning.kernel_caps_udp_buffer(tuning.DEFAULT_UDP_BUFFER_SIZE, rcv)
        assert not tuning.kernel_caps_udp_buffer(tuning.DEFAULT_UDP_BUFFER_SIZE, snd)
        assert (sysctl_d / "99-callsctl.conf").exists()

        proc = run_cli("tune", "--revert", "--yes", *common)
        assert proc.returncode == 0, proc.stderr
        assert _real_values() == start
        assert not (sysctl_d / "99-callsctl.conf").exists()
    finally:
        _restore_real(original)
    assert _real_values() == original


@pytest.fixture
def work() -> Iterator[Path]:
    """A scratch dir `nobody` can use too (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="callsctl-tune-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_unprivileged(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI as `nobody` (from root via setpriv), or as ourselves when not root."""
    prefix: list[str] = []
    if is_root():
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = dict(os.environ, HOME="/tmp")
    proc = subprocess.run([*prefix, sys.executable, "-m", "callsctl", "tune", *args],
                          capture_output=True, text=True, timeout=30, cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL)
    if "callsctl" not in proc.stdout + proc.stderr and proc.returncode != 0:
        pytest.skip(f"the unprivileged user cannot run {sys.executable} here: "
                    f"{proc.stderr.strip()[-200:]}")
    return proc


def test_unprivileged_user_gets_one_line_naming_root(work: Path) -> None:
    if is_root() and not have("setpriv"):
        pytest.skip("needs setpriv (util-linux) to drop to an unprivileged user")
    if not is_root() and os.access(REAL_SYSCTL / "net/core/rmem_max", os.W_OK):
        pytest.skip("this non-root user can write /proc/sys (CAP_NET_ADMIN?)")
    original = _real_values()
    proc = _as_unprivileged(["--apply", "--yes", "--data-dir", str(work / "data")])
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("callsctl: error: cannot write net.core.rmem_max")
    assert "needs root (uid 0, or CAP_NET_ADMIN" in lines[0]
    assert _real_values() == original
    assert not (work / "data").exists()  # nothing saved for an apply that did not happen

    proc = _as_unprivileged(["--persist", "--yes", "--data-dir", str(work / "data")])
    assert proc.returncode == 1
    assert "/etc/sysctl.d/99-callsctl.conf: permission denied" in proc.stderr
    assert "needs root" in proc.stderr

    proc = _as_unprivileged(["--dry-run", "--data-dir", str(work / "data")])
    assert proc.returncode == 0 and "doing it now would fail" in proc.stdout


@pytest.mark.root
def test_read_only_proc_sys_like_a_container(work: Path) -> None:
    """A private mount namespace with /proc/sys bind-mounted read-only, as Docker does."""
    if not is_root() or not have("unshare"):
        pytest.skip("needs root and unshare to make a read-only /proc/sys")
    original = _real_values()
    script = (f"mount -o bind,ro /proc/sys /proc/sys && exec {sys.executable} -m callsctl "
              f"tune --apply --yes --data-dir {work}/data --sysctl-d {work}")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                          text=True, timeout=30, cwd=REPO, stdin=subprocess.DEVNULL)
    if "mount" in proc.stderr and "callsctl" not in proc.stderr:
        pytest.skip(f"cannot make a read-only bind mount here: {proc.stderr.strip()}")
    assert proc.returncode == 1, proc
    assert "read-only file system, as in a container" in proc.stderr
    assert "set it on the host" in proc.stderr
    assert _real_values() == original


@pytest.mark.root
def test_root_in_its_own_network_namespace(work: Path) -> None:
    """Root in a fresh netns (a container's view): net.core.*mem_max belong to the host."""
    if not is_root() or not have("unshare"):
        pytest.skip("needs root and unshare to enter a new network namespace")
    original = _real_values()
    proc = subprocess.run(["unshare", "--net", sys.executable, "-m", "callsctl", "tune",
                           "--apply", "--yes", "--data-dir", f"{work}/data", "--sysctl-d",
                           str(work)], capture_output=True, text=True, timeout=30, cwd=REPO,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc
    line = proc.stderr.strip()
    assert "\n" not in line
    assert ("not in the host's network namespace" in line or "does not exist here" in line)
    assert _real_values() == original


def test_cli_asks_a_real_running_serve(server) -> None:
    """Against the real `callsctl serve`: its /version reports the media socket's buffers."""
    proc = run_cli("tune", "--json", "--server", server.api_url)
    assert proc.returncode == 0, proc.stderr
    srv = json.loads(proc.stdout)["evidence"]["server"]
    assert srv["reachable"] is True, srv
    assert srv["requested_bytes"] == tuning.DEFAULT_UDP_BUFFER_SIZE
    assert srv["rcvbuf_capped"] == tuning.kernel_caps_udp_buffer(srv["requested_bytes"],
                                                                 srv["rcvbuf_bytes"])
    assert srv["sndbuf_capped"] == tuning.kernel_caps_udp_buffer(srv["requested_bytes"],
                                                                 srv["sndbuf_bytes"])
