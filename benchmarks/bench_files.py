"""File benchmark: trio_p2p's send_file against socat and a raw sendfile loop, in one run.

trio_p2p runs encrypted (the default) and in plaintext mode
(``Config.insecure_plaintext``). Every measurement copies the same file over
loopback between two processes (a sender and a receiver), into a fresh
folder, and takes the wall time from the start of the sending to the moment
the receiver has the whole file (for trio_p2p: until send_file returns, which
is after the receiver verified the BLAKE3 digest and saved the file). It also
reports each side's peak RSS growth, and for trio_p2p the latency of a text
message sent in the middle of the transfer.

    python benchmarks/bench_files.py [--size-mib N] [--repeat K] [--steady-memory]

Nothing leaves the machine: the trio_p2p nodes use a private discovery port,
broadcast to 127.255.255.255 only, and connect to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import trio
from _common import cpu_seconds, free_port, peak_rss_mib, report

import trio_p2p

BLOCK = 1024 * 1024


def aes_seconds_per_gb(total: int = 256 * 1024 * 1024) -> float:
    """CPU seconds per GB to seal and open *total* bytes as the secure stream does.

    The transport's own record code (1 MiB writes, records of at most 64 KiB),
    best of three, with no I/O: what encryption costs a transfer at the least.
    """
    from trio_p2p._noise import Opener, Sealer

    key = os.urandom(32)
    data = memoryview(os.urandom(BLOCK))
    out = memoryview(bytearray(BLOCK))
    best = float("inf")
    for _ in range(3):
        sealer, opener = Sealer(key), Opener(key)
        start = time.process_time()
        for _ in range(total // BLOCK):
            records = sealer.seal(data)
            position = placed = 0
            while size := opener.next_record(records, position):
                placed += opener.open_into(records[position : position + size], out[placed:])
                position += size
            assert placed == BLOCK
        best = min(best, time.process_time() - start)
    return best / (total / 1e9)


def wait_for_go() -> None:
    """Tell the driver this sender is ready, and wait for its go (see warm_memory)."""
    report(ready=True)
    sys.stdin.readline()


#: set in the processes of the plaintext case
PLAINTEXT = False


def config(discovery_port: int, folder: str) -> trio_p2p.Config:
    return trio_p2p.Config(
        discovery_port=discovery_port,
        tcp_port=0,
        broadcast_addresses=("127.255.255.255",),
        download_dir=folder,
        insecure_plaintext=PLAINTEXT,
    )


# ------------------------------------------------------------------ roles


async def p2p_receiver(discovery_port: int, folder: str) -> None:
    async with trio_p2p.open_messenger("receiver", config(discovery_port, folder)) as node:
        base = peak_rss_mib()
        report(port=node.tcp_port)
        cpu = cpu_seconds()
        latency = 0.0
        async for event in node.events:
            if isinstance(event, trio_p2p.MessageReceived):
                assert isinstance(event.message.content, trio_p2p.Text)
                latency = time.time() - float(event.message.content.text)
            elif isinstance(event, trio_p2p.FileTransferCompleted | trio_p2p.FileTransferFailed):
                break
        report(rss_growth=peak_rss_mib() - base, latency_ms=latency * 1000, cpu=cpu_seconds() - cpu)


async def p2p_sender(port: int, discovery_port: int, path: str) -> None:
    with tempfile.TemporaryDirectory() as unused:
        async with trio_p2p.open_messenger("sender", config(discovery_port, unused)) as node:
            peer = await node.connect_to_peer(("127.0.0.1", port))
            await trio.to_thread.run_sync(wait_for_go)
            base = peak_rss_mib()
            cpu = cpu_seconds()
            start = time.monotonic()
            async with trio.open_nursery() as nursery:

                async def text_meanwhile() -> None:
                    # once a third of the file is confirmed, send a text
                    async for event in node.events:
                        if (
                            isinstance(event, trio_p2p.FileTransferProgress)
                            and event.bytes_transferred >= event.total_bytes // 3
                        ):
                            await node.send_text_message(peer.id, repr(time.time()))
                            return

                nursery.start_soon(text_meanwhile)
                await node.send_file(peer.id, path)
                nursery.cancel_scope.cancel()
            seconds = time.monotonic() - start
            report(seconds=seconds, rss_growth=peak_rss_mib() - base, cpu=cpu_seconds() - cpu)


def raw_receiver(folder: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        base = peak_rss_mib()
        report(port=listener.getsockname()[1])
        conn, _ = listener.accept()
        cpu = cpu_seconds()
        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        with conn, open(os.path.join(folder, "copy"), "wb") as out:
            while n := conn.recv_into(buffer):
                out.write(view[:n])
        report(rss_growth=peak_rss_mib() - base, latency_ms=0, cpu=cpu_seconds() - cpu)


def raw_sender(port: int, path: str) -> None:
    wait_for_go()
    base = peak_rss_mib()
    cpu = cpu_seconds()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock, open(path, "rb") as file:
        sock.sendfile(file)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the receiver closes once it has everything
    report(
        seconds=time.monotonic() - start, rss_growth=peak_rss_mib() - base, cpu=cpu_seconds() - cpu
    )


# ------------------------------------------------------------------ driver


def warm_memory(folder: str, size: int) -> None:
    """Write and delete *size* bytes in *folder*, just before a measured copy.

    On a virtual machine whose host takes back the memory its guest frees
    (free page reporting, as on the machines this was written on), the first
    write to such memory costs far more than the copy itself, and memory freed
    for more than a couple of seconds is taken back. Without this, the case
    whose processes start slower (Python and its imports) writes its copy into
    cold memory and the faster-starting one (socat) into the memory the last
    copy just freed: a difference of 2x and more that has nothing to do with
    either. Every case is warmed alike, outside the measured time. (This
    narrows the spread, it does not remove it: memory freed while a copy runs
    is taken back too, so the longer copy still pays more of it.)
    """
    path = os.path.join(folder, "warm")
    zeros = bytes(BLOCK)
    with open(path, "wb") as out:
        for _ in range(size // BLOCK + 64):
            out.write(zeros)
    os.unlink(path)


#: Linux's free page reporting: a VM guest tells the host which of its pages
#: are free, and the host takes them back; blocks of at least 2**order pages.
PAGE_REPORTING_ORDER = pathlib.Path("/sys/module/page_reporting/parameters/page_reporting_order")


@contextlib.contextmanager
def steady_memory(wanted: bool) -> Iterator[str]:
    """Hold off free page reporting for the run, if *wanted* (and possible); restore it after.

    On a VM guest with page reporting (as on the machines this was written
    on), memory freed for a second or two is given back to the host, and the
    next write to it costs several times the copy itself (a 1 GiB write into
    /dev/shm: 4.7 s cold, 0.37 s warm). Which copy pays that depends on when
    the reporter ran, not on the copy: single runs swing by 2x. With the
    reporting order raised to the largest block, freed memory stays with the
    guest and every case writes into warm memory (socat alike). Needs root.

    Yields:
        What was done, for the report.
    """
    if not wanted:
        yield "VM page reporting left as it is"
        return
    try:
        before = PAGE_REPORTING_ORDER.read_text().strip()
        PAGE_REPORTING_ORDER.write_text("10")
    except OSError as exc:
        yield f"VM page reporting left as it is ({exc.strerror or exc})"
        return
    try:
        yield f"VM page reporting held off (order {before} -> 10, restored after)"
    finally:
        PAGE_REPORTING_ORDER.write_text(before)


def run_pair(receiver: list[str], sender: list[str], folder: str, size: int) -> dict[str, float]:
    me = [sys.executable, os.path.abspath(__file__)]
    proc = subprocess.Popen([*me, *receiver], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = json.loads(proc.stdout.readline())["port"]
    sending = subprocess.Popen(
        [*me, *sender, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert sending.stdin is not None
    assert sending.stdout is not None
    assert json.loads(sending.stdout.readline()) == {"ready": True}
    warm_memory(folder, size)
    sending.stdin.write("go\n")
    sending.stdin.flush()
    output, _ = sending.communicate(timeout=600)
    if sending.returncode:
        raise subprocess.CalledProcessError(sending.returncode, sending.args, output)
    sent = json.loads(output.splitlines()[-1])
    received = json.loads(proc.stdout.readline())
    proc.wait(timeout=60)
    proc.stdout.close()
    return {
        "seconds": sent["seconds"],
        "sender_rss": sent["rss_growth"],
        "receiver_rss": received["rss_growth"],
        "latency_ms": received["latency_ms"],
        "cpu": sent["cpu"] + received["cpu"],
    }


def socat_copy(path: str, folder: str, size: int) -> dict[str, float] | None:
    socat = shutil.which("socat")
    if socat is None:
        return None
    port = free_port(socket.SOCK_STREAM)
    target = os.path.join(folder, "copy")
    receiver = subprocess.Popen(
        [
            socat,
            "-u",
            "-b",
            str(BLOCK),
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
            f"OPEN:{target},creat,trunc",
        ]
    )
    time.sleep(0.3)  # let it listen
    warm_memory(folder, size)
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(
        [socat, "-u", "-b", str(BLOCK), f"OPEN:{path}", f"TCP:127.0.0.1:{port}"], check=True
    )
    receiver.wait(timeout=600)
    return {
        "seconds": time.monotonic() - start,
        "sender_rss": 0,
        "receiver_rss": 0,
        "latency_ms": 0,
        "cpu": cpu_seconds(resource.RUSAGE_CHILDREN) - cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is kept")
    parser.add_argument(
        "--dir",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="where the files go (default: /dev/shm, memory, so that the disk's own "
        "write-back does not drown the network figures; pass a disk folder to include it)",
    )
    parser.add_argument(
        "--steady-memory",
        action="store_true",
        help="on a VM guest that gives freed memory back to its host (Linux free page "
        "reporting), hold that off for the run, so that every case writes into memory the "
        "guest still has (root; restored after); see steady_memory()",
    )
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    with (
        steady_memory(args.steady_memory) as memory,
        tempfile.TemporaryDirectory(prefix="bench_files_", dir=args.dir) as work,
    ):
        source = pathlib.Path(work) / "source.bin"
        with open(source, "wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(BLOCK))
        runs: dict[str, list[dict[str, float]]] = {
            "socat": [],
            "raw": [],
            "trio_p2p": [],
            "plain": [],
        }
        # Rounds of one run per case, so that a slow spell of the machine hits
        # every case alike (this VM's speed drifts by 2x and more).
        for _ in range(args.repeat):
            for name, found in runs.items():
                folder = tempfile.mkdtemp(dir=work)
                run: dict[str, float] | None
                if name == "socat":
                    run = socat_copy(str(source), folder, size)
                elif name == "raw":
                    run = run_pair(
                        ["raw-receiver", folder], ["raw-sender", str(source)], folder, size
                    )
                else:
                    discovery = str(free_port(socket.SOCK_DGRAM))
                    prefix = "plain-" if name == "plain" else ""
                    run = run_pair(
                        [f"{prefix}p2p-receiver", discovery, folder],
                        [f"{prefix}p2p-sender", discovery, str(source)],
                        folder,
                        size,
                    )
                if run is not None:
                    copies = [
                        p for p in pathlib.Path(folder).iterdir() if not p.name.startswith(".")
                    ]
                    assert len(copies) == 1, copies
                    assert copies[0].stat().st_size == size, copies
                    found.append(run)
                shutil.rmtree(folder)
        results = {
            name: min(found, key=lambda r: r["seconds"]) for name, found in runs.items() if found
        }
        medians = {
            name: statistics.median(size / r["seconds"] / 1e9 for r in found)
            for name, found in runs.items()
            if found
        }
    print(
        f"{args.size_mib} MiB file over loopback into {args.dir or 'the temp folder'}, "
        f"best of {args.repeat} interleaved rounds ({memory}):"
    )
    socat_rate = size / results["socat"]["seconds"] / 1e9 if "socat" in results else None
    for name, label in [
        ("socat", "socat -b 1048576"),
        ("raw", "raw Python sendfile/recv_into"),
        ("trio_p2p", "trio_p2p send_file (verified)"),
        ("plain", "  the same, plaintext"),
    ]:
        if name not in results:
            print(f"  {label:32} (socat not installed)")
            continue
        r = results[name]
        rate = size / r["seconds"] / 1e9
        ratio = f"{rate / socat_rate:5.2f}x socat" if socat_rate else ""
        cpu = r["cpu"] / (size / 1e9)
        print(
            f"  {label:32} {rate:6.2f} GB/s (median {medians[name]:4.2f})  {ratio}  "
            f"CPU {cpu:4.2f} s/GB  peak RSS growth: "
            f"sender {r['sender_rss']:.0f} MiB, receiver {r['receiver_rss']:.0f} MiB"
        )
    encrypted = size / results["trio_p2p"]["seconds"]
    print(f"trio_p2p encrypted / plaintext: {encrypted * results['plain']['seconds'] / size:.2f}x")
    # Both trio_p2p cases keep the machine's cores busy, so the rate ratio is
    # bounded by the CPU ratio; the AES-GCM work alone sets a bound on that.
    plain_cpu = results["plain"]["cpu"] / (size / 1e9)
    secure_cpu = results["trio_p2p"]["cpu"] / (size / 1e9)
    aes = aes_seconds_per_gb()
    print(
        f"CPU per GB, plaintext / encrypted: {plain_cpu / secure_cpu:.2f}x "
        f"({os.cpu_count()} cores); AES-GCM alone (seal + open, this process): "
        f"{aes:.3f} s/GB, so at most {plain_cpu / (plain_cpu + aes):.2f}x"
    )
    latency = results["trio_p2p"]["latency_ms"]
    print(f"a text sent a third of the way through arrived after {latency:.1f} ms")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].removeprefix("plain-") in (
        "p2p-receiver",
        "p2p-sender",
        "raw-receiver",
        "raw-sender",
    ):
        role, rest = sys.argv[1], sys.argv[2:]
        if role.startswith("plain-"):
            PLAINTEXT, role = True, role.removeprefix("plain-")
        if role == "p2p-receiver":
            trio.run(p2p_receiver, int(rest[0]), rest[1])
        elif role == "p2p-sender":
            trio.run(p2p_sender, int(rest[2]), int(rest[0]), rest[1])
        elif role == "raw-receiver":
            raw_receiver(rest[0])
        else:
            raw_sender(int(rest[1]), rest[0])
    else:
        main()
