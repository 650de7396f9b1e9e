"""What batching sends would save: sendto per packet vs sendmmsg(2) in batches.

The forwarding floor on this machine is dominated by the kernel: a loopback
sendto does the whole delivery in the sender's context. sendmmsg hands the
kernel a batch in one system call (Linux, glibc), which saves the per-call
entry/exit cost but not the per-packet delivery. This measures both on the
same packets, to a sink drained by another process, in CPU microseconds per
datagram (utime + stime of this process, as the SFU figures are).

`--sink`: the sink meter (bench/sink_meter.py) drops the datagrams at the
loopback device, after the whole send path and before the sink socket: the
send path alone, without the loopback delivery the sender pays for otherwise.

    python bench/sendmmsg_floor.py --packets 200000 --batch 32
    python bench/sendmmsg_floor.py --packets 200000 --batch 32 --sink
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import multiprocessing
import os
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sink_meter import MeterError, SinkMeter  # noqa: E402


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


def drain(port: int, stop: multiprocessing.Event) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink.bind(("127.0.0.1", port))
    sink.settimeout(0.2)
    while not stop.is_set():
        try:
            sink.recv(2048)
        except TimeoutError:
            continue


def cpu() -> float:
    times = os.times()
    return times.user + times.system


def with_sendto(sock: socket.socket, addr: tuple[str, int], packet: bytes, count: int) -> float:
    start = cpu()
    for _ in range(count):
        try:
            sock.sendto(packet, addr)
        except BlockingIOError:
            time.sleep(0.0005)
    return (cpu() - start) / count * 1e6


def with_sendmmsg(sock: socket.socket, addr: tuple[str, int], packet: bytes, count: int,
                  batch: int) -> float:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    name = struct.pack("!HH4s8x", socket.AF_INET, addr[1], socket.inet_aton(addr[0]))
    name = struct.pack("=H", socket.AF_INET) + name[2:]  # sa_family is host order
    name_buf = ctypes.create_string_buffer(name, len(name))
    data = ctypes.create_string_buffer(packet, len(packet))
    iovs = (IoVec * batch)(*[IoVec(ctypes.cast(data, ctypes.c_void_p), len(packet))
                             for _ in range(batch)])
    msgs = (MMsgHdr * batch)()
    for i in range(batch):
        msgs[i].msg_hdr = MsgHdr(ctypes.cast(name_buf, ctypes.c_void_p), len(name),
                                 ctypes.pointer(iovs[i]), 1, None, 0, 0)
    fd = sock.fileno()
    sent = 0
    start = cpu()
    while sent < count:
        n = libc.sendmmsg(fd, msgs, min(batch, count - sent), 0)
        if n < 0:
            time.sleep(0.0005)
            continue
        sent += n
    return (cpu() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=226)
    parser.add_argument("--sink", action="store_true",
                        help="drop the datagrams at the loopback device (needs root and nft)")
    args = parser.parse_args()
    if not 1000 <= args.packets <= 5_000_000 or not 1 <= args.batch <= 1024:
        parser.error("--packets 1000..5000000, --batch 1..1024")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    stop = multiprocessing.Event()
    sink = multiprocessing.Process(target=drain, args=(port, stop), daemon=True)
    sink.start()
    time.sleep(0.3)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    packet = bytes([0x80, 0x6F]) + os.urandom(args.size - 2)  # RTP-looking: the meter's match
    addr = ("127.0.0.1", port)
    meter = None
    try:
        if args.sink:
            try:
                meter = SinkMeter(sock.getsockname()[1], sink=True).open()
            except MeterError as exc:
                raise SystemExit(f"error: {exc}") from None
        results = {"sendto_us": [], "sendmmsg_us": []}
        for _ in range(3):  # alternate, so drift hits both alike
            results["sendto_us"].append(with_sendto(sock, addr, packet, args.packets))
            results["sendmmsg_us"].append(with_sendmmsg(sock, addr, packet, args.packets,
                                                        args.batch))
        dropped = meter.read().dropped if meter is not None else None
    finally:
        if meter is not None:
            meter.close()
        stop.set()
        sink.join(5)
    median = {k: sorted(v)[1] for k, v in results.items()}
    print(json.dumps({"packets": args.packets, "batch": args.batch, "size": args.size,
                      "sink": args.sink, "dropped_by_meter": dropped,
                      **median, "saving": 1 - median["sendmmsg_us"] / median["sendto_us"]}))


if __name__ == "__main__":
    main()
