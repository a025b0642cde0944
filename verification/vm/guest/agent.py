#!/usr/bin/python3
"""The lab guest's command agent (started by /sbin/duet-init from the 9p share).

It serves the virtio-serial port named "duet.agent": one JSON object per line in each
direction. A request {"id": N, "cmd": "shell text", "timeout": S} runs `sh -c` with its output
captured; the answer is {"id": N, "rc": R, "out": "..."} (rc 124 and the output so far when the
timeout ends it: its whole process group is killed). {"id": N, "ping": true} answers {"id": N,
"rc": 0, "out": "pong"}. Requests run concurrently, each in a thread of its own.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

PORT_NAME = "duet.agent"


def find_port():
    base = "/sys/class/virtio-ports"
    for _ in range(300):
        try:
            for d in os.listdir(base):
                try:
                    with open(os.path.join(base, d, "name")) as f:
                        if f.read().strip() == PORT_NAME:
                            return "/dev/" + d
                except OSError:
                    pass
        except OSError:
            pass
        time.sleep(0.1)
    return None


def main():
    path = find_port()
    if path is None:
        print("agent: no virtio port named " + PORT_NAME, file=sys.stderr)
        return 1
    fd = os.open(path, os.O_RDWR)
    wlock = threading.Lock()

    def send(obj):
        data = (json.dumps(obj) + "\n").encode()
        with wlock:
            while data:
                n = os.write(fd, data)
                data = data[n:]

    def run(req):
        rid = req.get("id")
        if req.get("ping"):
            send({"id": rid, "rc": 0, "out": "pong"})
            return
        timeout = float(req.get("timeout", 60))
        try:
            p = subprocess.Popen(
                ["/bin/sh", "-c", req["cmd"]],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            send({"id": rid, "rc": 127, "out": str(e)})
            return
        try:
            out, _ = p.communicate(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                out, _ = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out = b""
            rc = 124
        send({"id": rid, "rc": rc, "out": out.decode("utf-8", "replace")[-200000:]})

    buf = b""
    print("agent: serving " + path, file=sys.stderr)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            time.sleep(0.2)
            continue
        if not chunk:
            # No host connected: the port reads as closed. Wait for one.
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                continue
            threading.Thread(target=run, args=(req,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main() or 0)
