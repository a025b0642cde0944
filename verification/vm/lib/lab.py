#!/usr/bin/env python3
"""The Duet virtual lab: ctrl-a, ctrl-b and cln-1 as QEMU guests, a shared SCSI disk with
persistent reservations (tgt), Linux's initiator with dm-multipath. Called by run.sh.

Topology (one network namespace `duetvm-<pid>`, no uplink):

    br-pub 10.71.1.0/24   ctrl-a .1, ctrl-b .2 (portals), cln-1 .10
    br-ha  10.71.2.0/24   ctrl-a .1, ctrl-b .2 (HA link)
    br-san 10.71.3.0/24   ctrl-a .1, ctrl-b .2, tgt on the bridge itself .254 (LUN 1 data
                          256 MiB, LUN 2 quorum 8 MiB)

Every step is logged with a timestamp on stderr; the last stdout line is the scenario's JSON.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

NS_PREFIX = "duetvm-"
RUN_PREFIX = "/tmp/duet-vm-"
NETS = {"pub": "10.71.1", "ha": "10.71.2", "san": "10.71.3"}
SAN_PORTAL = NETS["san"] + ".254"
SAN_IQN = "iqn.2026-12.dev.duet.vmlab:san"
TARGET_IQN = "iqn.2026-12.dev.duet.vmlab:disk0"
LINK_PORT = 7777
GUESTS = {
    "ctrl-a": {"short": "ca", "nics": [("pub", 1), ("ha", 1), ("san", 1)], "id": 1},
    "ctrl-b": {"short": "cb", "nics": [("pub", 2), ("ha", 2), ("san", 2)], "id": 2},
    "cln-1": {"short": "c1", "nics": [("pub", 10)], "id": 10},
}
CTRLS = ("ctrl-a", "ctrl-b")
# Lease timing for TCG guests (slow, single vCPU, shared host): seconds, not the loopback lab's
# 1.2 s.
TIMING = dict(lease_ms=3000, renew_ms=750, drift_ms=200, margin_ms=1000, heartbeat_ms=250,
              dead_after_ms=2000, fence_timeout_ms=15000)
SCENARIOS = ["secondary-poweroff", "primary-poweroff", "primary-freeze", "ha-cut", "manual",
             "switchover", "sigterm"]
# `--scenario all`: every scenario in mode 1, primary-poweroff and switchover in modes 0 and 2.
MATRIX = [("primary-poweroff", 1), ("switchover", 1)] + [
    (s, 1) for s in SCENARIOS if s not in ("primary-poweroff", "switchover")] + [
    (s, m) for m in (0, 2) for s in ("primary-poweroff", "switchover", "sigterm")]

T0 = time.monotonic()
LOGF = None


def log(msg):
    line = "[lab %s +%.1fs] %s" % (time.strftime("%H:%M:%S", time.gmtime()),
                                   time.monotonic() - T0, msg)
    print(line, file=sys.stderr, flush=True)
    if LOGF:
        LOGF.write(line + "\n")
        LOGF.flush()


class LabError(Exception):
    pass


def sh(args, timeout=30, check=True, **kw):
    """Runs a host command with a timeout; returns (rc, output)."""
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise LabError("timed out after %ss: %s" % (timeout, " ".join(args)))
    out = p.stdout.decode("utf-8", "replace")
    if check and p.returncode != 0:
        raise LabError("%s: exit %d: %s" % (" ".join(args), p.returncode, out.strip()[-2000:]))
    return p.returncode, out


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def tail(path, n=25):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "(no %s)" % path


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read_text(path):
    try:
        with open(path, "rb") as f:
            return ANSI.sub("", f.read().decode("utf-8", "replace"))
    except OSError:
        return ""


# ---- leftovers of interrupted runs ----------------------------------------------------------

def clean_leftovers():
    _, out = sh(["ip", "netns", "list"], check=False)
    for line in out.splitlines():
        ns = line.split()[0] if line.split() else ""
        if not ns.startswith(NS_PREFIX):
            continue
        try:
            owner = int(ns[len(NS_PREFIX):])
        except ValueError:
            continue
        if pid_alive(owner):
            continue
        log("removing the leftovers of an interrupted run: namespace %s" % ns)
        kill_ns_processes(ns)
        sh(["ip", "netns", "del", ns], check=False)
    for d in os.listdir("/tmp"):
        path = os.path.join("/tmp", d)
        if not path.startswith(RUN_PREFIX):
            continue
        try:
            owner = int(path[len(RUN_PREFIX):])
        except ValueError:
            continue
        if not pid_alive(owner) and not os.path.exists(os.path.join(path, "keep")):
            log("removing the run directory of an interrupted run: %s" % path)
            shutil.rmtree(path, ignore_errors=True)


def kill_ns_processes(ns):
    """SIGKILLs the processes inside a namespace this lab created (qemu, tgtd)."""
    _, out = sh(["ip", "netns", "pids", ns], check=False)
    pids = [int(p) for p in out.split() if p.isdigit()]
    for p in pids:
        try:
            cmd = open("/proc/%d/cmdline" % p, "rb").read().split(b"\0")[0]
        except OSError:
            continue
        if os.path.basename(cmd.decode(errors="replace")) in ("tgtd",):
            # tgtd keeps running after SIGTERM while a target exists: SIGKILL.
            pass
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    for _ in range(50):
        if not any(pid_alive(p) for p in pids):
            break
        time.sleep(0.1)


# ---- the guest agent ------------------------------------------------------------------------

class Agent:
    """Client of the guest's command agent over its virtio-serial port (a Unix socket here)."""

    def __init__(self, path, name):
        self.path = path
        self.name = name
        self.sock = None
        self.lock = threading.Lock()
        self.next_id = 1
        self.pending = {}
        self.closed = False

    def connect(self, deadline, alive):
        while time.monotonic() < deadline:
            if not alive():
                raise LabError("%s: qemu exited while booting" % self.name)
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.path)
                self.sock = s
                break
            except OSError:
                s.close()
                time.sleep(0.3)
        else:
            raise LabError("%s: no agent socket" % self.name)
        threading.Thread(target=self._reader, daemon=True).start()
        while time.monotonic() < deadline:
            if not alive():
                raise LabError("%s: qemu exited while booting" % self.name)
            try:
                self.call({"ping": True}, 2)
                return
            except LabError:
                pass
        raise LabError("%s: the agent did not answer" % self.name)

    def _reader(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                with self.lock:
                    slot = self.pending.get(msg.get("id"))
                if slot is not None:
                    slot[1] = msg
                    slot[0].set()
        with self.lock:
            self.closed = True
            for slot in self.pending.values():
                slot[0].set()

    def call(self, req, timeout):
        with self.lock:
            if self.closed:
                raise LabError("%s: agent connection closed" % self.name)
            rid = self.next_id
            self.next_id += 1
            slot = [threading.Event(), None]
            self.pending[rid] = slot
        req = dict(req, id=rid)
        try:
            self.sock.sendall((json.dumps(req) + "\n").encode())
        except OSError as e:
            raise LabError("%s: agent: %s" % (self.name, e))
        try:
            if not slot[0].wait(timeout) or slot[1] is None:
                raise LabError("%s: agent: no answer within %ss to %s"
                               % (self.name, timeout, req.get("cmd", "ping")))
            return slot[1]
        finally:
            with self.lock:
                self.pending.pop(rid, None)

    def send_only(self, cmd):
        """Sends a command without waiting (for one that ends the guest)."""
        with self.lock:
            rid = self.next_id
            self.next_id += 1
        try:
            self.sock.sendall((json.dumps({"id": rid, "cmd": cmd, "timeout": 30}) + "\n").encode())
        except OSError:
            pass

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass


class Guest:
    def __init__(self, lab, name):
        self.lab = lab
        self.name = name
        self.spec = GUESTS[name]
        self.proc = None
        self.agent = None
        self.boots = 0
        self.boot_s = []
        self.console = os.path.join(lab.run, name + ".console.log")
        self.qmp_path = os.path.join(lab.run, name + ".qmp")
        self.agent_path = os.path.join(lab.run, name + ".agent")

    def tap(self, net):
        return "%s-%s" % (self.spec["short"], net)

    def addr(self, net):
        for n, host in self.spec["nics"]:
            if n == net:
                return "%s.%d" % (NETS[n], host)
        raise KeyError(net)

    def start(self):
        img = self.lab.image
        args = ["root=/dev/vda", "rw", "console=ttyS0", "net.ifnames=0", "quiet",
                "init=/sbin/duet-init", "duet.name=" + self.name]
        cmd = ["ip", "netns", "exec", self.lab.ns, "qemu-system-x86_64", "-name", self.name,
               "-accel", "tcg", "-m", "512", "-smp", "1", "-display", "none", "-vga", "none",
               "-nodefaults", "-no-reboot",
               "-kernel", os.path.join(img, "vmlinuz"), "-initrd", os.path.join(img, "initrd.img"),
               "-drive", "file=%s,format=raw,if=virtio,snapshot=on"
               % os.path.join(img, "rootfs.img")]
        for i, (net, host) in enumerate(self.spec["nics"]):
            args.append("duet.eth%d=%s.%d/24" % (i, NETS[net], host))
            cmd += ["-netdev", "tap,id=n%d,ifname=%s,script=no,downscript=no" % (i, self.tap(net)),
                    "-device", "virtio-net-pci,netdev=n%d,mac=52:54:00:71:%02x:%02x,addr=0x%x"
                    % (i, self.spec["id"], i, 3 + i)]
        cmd += ["-append", " ".join(args),
                "-virtfs", "local,path=%s,mount_tag=stage,security_model=none,readonly=on"
                % self.lab.stage,
                "-virtfs", "local,path=%s,mount_tag=out,security_model=none" % self.lab.out,
                "-device", "virtio-serial-pci",
                "-chardev", "socket,id=agent,path=%s,server=on,wait=off" % self.agent_path,
                "-device", "virtserialport,chardev=agent,name=duet.agent",
                "-chardev", "file,id=con,path=%s,append=on" % self.console,
                "-serial", "chardev:con",
                "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
        for p in (self.agent_path, self.qmp_path):
            if os.path.exists(p):
                os.unlink(p)
        os.makedirs(os.path.join(self.lab.out, self.name), exist_ok=True)
        qlog = open(os.path.join(self.lab.run, self.name + ".qemu.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog,
                                     start_new_session=True)
        qlog.close()
        self.lab.pids.add(self.proc.pid)
        self.t_start = time.monotonic()
        self.boots += 1
        log("%s: qemu started (pid %d, boot %d)" % (self.name, self.proc.pid, self.boots))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_agent(self, timeout=240):
        self.agent = Agent(self.agent_path, self.name)
        try:
            self.agent.connect(time.monotonic() + timeout, self.alive)
        except LabError:
            log("%s: console tail:\n%s" % (self.name, tail(self.console)))
            raise
        s = time.monotonic() - self.t_start
        self.boot_s.append(round(s, 1))
        log("%s: agent up %.1f s after qemu start" % (self.name, s))

    def run(self, cmd, timeout=60, check=True):
        r = self.agent.call({"cmd": cmd, "timeout": timeout}, timeout + 20)
        if check and r["rc"] != 0:
            raise LabError("%s: `%s` exit %d: %s" % (self.name, cmd, r["rc"], r["out"][-3000:]))
        return r["rc"], r["out"]

    def qmp(self, command, timeout=10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.qmp_path)
            f = s.makefile("rwb")
            f.readline()  # greeting
            for c in ("qmp_capabilities", command):
                f.write((json.dumps({"execute": c}) + "\n").encode())
                f.flush()
                while True:
                    msg = json.loads(f.readline())
                    if "return" in msg or "error" in msg:
                        break
                if "error" in msg:
                    raise LabError("%s: QMP %s: %s" % (self.name, c, msg["error"]))
            return msg
        except (OSError, ValueError) as e:
            raise LabError("%s: QMP %s: %s" % (self.name, command, e))
        finally:
            s.close()

    def wait_exit(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabError("%s: qemu still running %ss after poweroff" % (self.name, timeout))
        self.lab.pids.discard(self.proc.pid)
        if self.agent:
            self.agent.close()
        log("%s: qemu exited (%s)" % (self.name, self.proc.returncode))

    def poweroff(self):
        """`poweroff -f` inside the guest: the kernel stops at once, its memory is gone."""
        # The image has no systemd, hence no poweroff(8): SysRq o is the same immediate power
        # off (no sync, no clean shut-down).
        log("%s: power off at once (SysRq o, as poweroff -f)" % self.name)
        self.agent.send_only("echo 1 > /proc/sys/kernel/sysrq; echo o > /proc/sysrq-trigger")
        try:
            self.wait_exit(30)
        except LabError:
            log("%s: still running: QMP quit (power cut)" % self.name)
            self.qmp("quit")
            self.wait_exit(30)

    def kill(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.qmp("quit", timeout=3)
        except LabError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.lab.pids.discard(self.proc.pid)
        if self.agent:
            self.agent.close()


# ---- the lab --------------------------------------------------------------------------------

class Lab:
    def __init__(self, image, bindir, keep):
        self.image = image
        self.bindir = bindir
        self.keep = keep
        self.ns = NS_PREFIX + str(os.getpid())
        self.run = RUN_PREFIX + str(os.getpid())
        self.stage = os.path.join(self.run, "stage")
        self.out = os.path.join(self.run, "out")
        self.pids = set()
        self.tgt = None
        self.tgt_ctrl = None
        self.guests = {}
        self.timings = {}

    # -- set-up --
    def prepare_dirs(self):
        os.makedirs(os.path.join(self.stage, "bin"))
        os.makedirs(self.out)
        os.chmod(self.out, 0o777)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for f in os.listdir(os.path.join(here, "guest")):
            shutil.copy(os.path.join(here, "guest", f), self.stage)
        for b in ("duetd", "duetctl", "duet-blockcheck"):
            src = os.path.join(self.bindir, b)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(self.stage, "bin", b))
        self.workload = ("/duet/bin/duet-blockcheck"
                         if os.path.exists(os.path.join(self.stage, "bin", "duet-blockcheck"))
                         else "python3 /duet/blockcheck.py")

    def net_up(self):
        log("namespace %s: bridges pub, ha, san; taps" % self.ns)
        sh(["ip", "netns", "add", self.ns])
        ip = ["ip", "-n", self.ns]
        sh(ip + ["link", "set", "lo", "up"])
        for net in NETS:
            sh(ip + ["link", "add", "br-" + net, "type", "bridge"])
            sh(ip + ["link", "set", "br-" + net, "up"])
        sh(ip + ["addr", "add", SAN_PORTAL + "/24", "dev", "br-san"])
        for g in GUESTS:
            for net, _ in GUESTS[g]["nics"]:
                tap = "%s-%s" % (GUESTS[g]["short"], net)
                sh(ip + ["tuntap", "add", "dev", tap, "mode", "tap"])
                sh(ip + ["link", "set", tap, "master", "br-" + net])
                sh(ip + ["link", "set", tap, "up"])

    def tgt_adm(self, *args, check=True):
        return sh(["tgtadm", "-C", str(self.tgt_ctrl)] + list(args), timeout=20, check=check)

    def tgt_up(self):
        ctrl = 4000 + os.getpid() % 4000
        while os.path.exists("/var/run/tgtd/socket.%d" % ctrl):
            ctrl += 1
        self.tgt_ctrl = ctrl
        san = os.path.join(self.run, "san")
        os.makedirs(san)
        for name, size in (("disk0.img", 256 << 20), ("quorum.img", 8 << 20)):
            with open(os.path.join(san, name), "wb") as f:
                f.truncate(size)
        tlog = open(os.path.join(self.run, "tgtd.log"), "ab")
        self.tgt = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "tgtd", "-f", "-C", str(ctrl), "--iscsi",
             "portal=%s:3260" % SAN_PORTAL],
            stdin=subprocess.DEVNULL, stdout=tlog, stderr=tlog, start_new_session=True)
        tlog.close()
        self.pids.add(self.tgt.pid)
        deadline = time.monotonic() + 15
        while self.tgt_adm("--op", "show", "--mode", "sys", check=False)[0] != 0:
            if time.monotonic() > deadline or self.tgt.poll() is not None:
                raise LabError("tgtd did not come up: " + tail(os.path.join(self.run, "tgtd.log")))
            time.sleep(0.2)
        self.tgt_adm("--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1",
                     "-T", SAN_IQN)
        for lun, name in ((1, "disk0.img"), (2, "quorum.img")):
            self.tgt_adm("--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1",
                         "--lun", str(lun), "-b", os.path.join(san, name))
        self.tgt_adm("--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1",
                     "-I", "ALL")
        log("tgtd (pid %d, control port %d) exports %s: LUN 1 256 MiB, LUN 2 8 MiB on %s:3260"
            % (self.tgt.pid, ctrl, SAN_IQN, SAN_PORTAL))

    def boot(self, names):
        for n in names:
            self.guests.setdefault(n, Guest(self, n)).start()
        errs = []

        def w(g):
            try:
                g.wait_agent()
            except Exception as e:  # noqa: BLE001 - reported below
                errs.append(e)
        ts = [threading.Thread(target=w, args=(self.guests[n],)) for n in names]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errs:
            raise errs[0]

    def san_login(self, name):
        g = self.guests[name]
        _, out = g.run("/duet/san-login.sh %s %s %s" % (name, SAN_PORTAL, SAN_IQN), timeout=90)
        log("%s: SAN attached: %s" % (name, " ".join(out.split())))

    def ctrl_config(self, name, mode, failover, create_quorum=False):
        g = self.guests[name]
        hid = GUESTS[name]["id"]
        a = self.guests["ctrl-a"]
        peer = ("listen %s:%d" % (a.addr("ha"), LINK_PORT) if hid == 1
                else "connect %s:%d" % (a.addr("ha"), LINK_PORT))
        dev = "/dev/disk/by-path/ip-%s:3260-iscsi-%s-lun-" % (SAN_PORTAL, SAN_IQN)
        timing = "\n".join("%s = %d" % kv for kv in TIMING.items())
        return """# %(name)s of the Duet virtual lab
ping_timeout = 5
io_threads = 1

[portal_group.pg0]
listen = ["%(portal)s:3260"]
discovery_auth_group = "none"

[[target]]
name = "%(target)s"
alias = "duet vm lab"
portal_group = "pg0"
auth_group = "none"

[[target.lun]]
number = 0
path = "%(dev)s1"
block_size = 512
serial = "DUETVM0001"

[ha]
id = %(id)d
mode = %(mode)d
role = "%(role)s"
peer = "%(peer)s"
failover = "%(failover)s"
quorum = "%(dev)s2"
quorum_create = %(qc)s
fencing = "scsi-pr"
secret = "duet-vm-lab-link-secret-0123456789"
admin_socket = "/run/duet/duetd.sock"
%(timing)s
""" % dict(name=name, portal=g.addr("pub"), target=TARGET_IQN, dev=dev, id=hid, mode=mode,
           role="primary" if hid == 1 else "secondary", peer=peer, failover=failover,
           timing=timing, qc="true" if create_quorum else "false")

    def start_duetd(self, name, mode, failover, create_quorum=False):
        g = self.guests[name]
        conf = self.ctrl_config(name, mode, failover, create_quorum)
        g.run("mkdir -p /run/duet && cat > /run/duet/duetd.toml <<'EOF'\n%sEOF" % conf)
        g.run("/duet/bin/duetd check-config /run/duet/duetd.toml >/out/%s/check-config.txt 2>&1"
              % name, timeout=30)
        g.run("echo '=== duetd start (boot %d) ===' >> /out/%s/duetd.log; "
              "setsid /duet/bin/duetd --config /run/duet/duetd.toml "
              ">>/out/%s/duetd.log 2>&1 </dev/null & echo $! > /run/duet/duetd.pid"
              % (g.boots, name, name))
        log("%s: duetd started (mode %d, failover %s)" % (name, mode, failover))

    def ha(self, name, timeout=15):
        g = self.guests[name]
        rc, out = g.run("/duet/bin/duetctl --socket /run/duet/duetd.sock ha --json",
                        timeout=timeout, check=False)
        if rc != 0:
            return None
        try:
            return json.loads(out[out.index("{"):])
        except ValueError:
            log("%s: duetctl ha --json: unreadable: %s" % (name, out[:300]))
            return None

    def role(self, name):
        h = self.ha(name)
        if not h or not h.get("luns"):
            return None, h
        return h["luns"][0]["role"], h

    def wait_role(self, name, want, timeout, link=None):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            r, h = self.role(name)
            last = h
            if h is None and self.guests[name].run(
                    "kill -0 $(cat /run/duet/duetd.pid)", check=False)[0] != 0:
                raise LabError("%s: duetd is not running: %s" % (name, tail(os.path.join(
                    self.out, name, "duetd.log"), 5)))
            if r == want and (link is None or (h and h.get("link_state") == link)):
                return h
            time.sleep(1)
        raise LabError("%s: role %s (link %s) not reached in %ss; last: %s"
                       % (name, want, link, timeout, json.dumps(last)[:1500]))

    def controllers_up(self, mode, failover):
        ts = [threading.Thread(target=self._login_safe, args=(n,)) for n in CTRLS]
        self._errs = []
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if self._errs:
            raise self._errs[0]
        # The first controller formats the (blank) quorum LUN.
        self.start_duetd("ctrl-a", mode, failover, create_quorum=True)
        if failover != "manual":
            # Under manual failover a controller takes no role before it has met its peer.
            self.wait_role("ctrl-a", "primary", 90)
        self.start_duetd("ctrl-b", mode, failover)
        self.wait_role("ctrl-a", "primary", 90)
        self.wait_role("ctrl-b", "secondary", 90, link=2)
        log("pair up: ctrl-a primary, ctrl-b secondary, HA link established")

    def _login_safe(self, n):
        try:
            self.san_login(n)
        except Exception as e:  # noqa: BLE001
            self._errs.append(e)

    def client_up(self):
        c = self.guests["cln-1"]
        portals = " ".join(self.guests[n].addr("pub") for n in CTRLS)
        _, out = c.run("/duet/cln-setup.sh cln-1 %s %s" % (TARGET_IQN, portals), timeout=120)
        log("cln-1: multipath -ll:\n" + out.rstrip())
        return out

    def multipath_ll(self):
        return self.guests["cln-1"].run("multipath -ll", timeout=30, check=False)[1]

    def check_multipath(self, timeout=60):
        """One map, the optimized group active, the other enabled, both paths present."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.multipath_ll()
            maps = [l for l in out.splitlines() if re.match(r"^\S+ \(", l)]
            groups = re.findall(r"policy='[^']*' prio=(\d+) status=(\w+)", out)
            paths = re.findall(r"\d+:\d+:\d+:\d+ (sd\w+) \S+ +(\w+) (\w+) (\w+)", out)
            if (len(maps) == 1 and len(groups) == 2 and groups[0][1] == "active"
                    and groups[1][1] == "enabled" and int(groups[0][0]) > int(groups[1][0])
                    and len(paths) == 2 and all(p[1] == "active" for p in paths)):
                return out
            time.sleep(2)
        raise LabError("multipath -ll is not one map with an active optimized group and an "
                       "enabled one:\n" + out)

    def paths(self):
        _, out = self.guests["cln-1"].run("/duet/paths.sh", check=False)
        m = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                m[parts[0]] = parts[1]
        return m

    # -- workload --
    def start_workload(self, size_mb=32, threads=4):
        c = self.guests["cln-1"]
        c.run("rm -f /run/duet-stop /out/cln-1/result.json /out/cln-1/progress.json; "
              "mkdir -p /out/cln-1")
        cmd = ("%s --device /dev/mapper/duet0 --init --threads %d --write-pct 50 --size-mb %d "
               "--stop-file /run/duet-stop --progress-file /out/cln-1/progress.json "
               "--json-out /out/cln-1/result.json --stall-threshold-ms 500"
               % (self.workload, threads, size_mb))
        c.run("setsid sh -c '%s' >/out/cln-1/workload.out 2>&1 </dev/null &" % cmd)
        log("cln-1: workload started: %s" % cmd)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            p = self.progress()
            if p and p.get("ios", 0) >= 50:
                log("cln-1: workload running (%d I/Os)" % p["ios"])
                return
            time.sleep(1)
        raise LabError("workload did not start: " + tail(os.path.join(self.out, "cln-1",
                                                                      "workload.out")))

    def progress(self):
        try:
            with open(os.path.join(self.out, "cln-1", "progress.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def ios_grow(self, timeout=120):
        """Waits until the workload has completed new I/O (the client is served again)."""
        p0 = self.progress() or {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(1)
            p = self.progress() or {}
            if p.get("ios", 0) > p0.get("ios", 0) + 20:
                return True
        return False

    def stop_workload(self):
        c = self.guests["cln-1"]
        c.run("touch /run/duet-stop")
        path = os.path.join(self.out, "cln-1", "result.json")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if os.path.exists(path):
                try:
                    with open(path) as f:
                        return json.loads(f.read().strip().splitlines()[-1])
                except (ValueError, IndexError):
                    pass
            time.sleep(1)
        raise LabError("no workload result: " + tail(os.path.join(self.out, "cln-1",
                                                                  "workload.out")))

    # -- tear-down --
    def down(self):
        for g in self.guests.values():
            try:
                g.kill()
            except Exception as e:  # noqa: BLE001
                log("%s: kill: %s" % (g.name, e))
        if self.tgt is not None and self.tgt.poll() is None:
            self.tgt_adm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1",
                         "--force", check=False)
            self.tgt_adm("--op", "delete", "--mode", "system", check=False)
            try:
                self.tgt.wait(5)
            except subprocess.TimeoutExpired:
                log("tgtd (pid %d) had to be killed" % self.tgt.pid)
                os.kill(self.tgt.pid, signal.SIGKILL)
                self.tgt.wait(5)
            self.pids.discard(self.tgt.pid)
        if self.tgt_ctrl is not None:
            for s in ("", ".lock"):
                try:
                    os.unlink("/var/run/tgtd/socket.%d%s" % (self.tgt_ctrl, s))
                except OSError:
                    pass
        for p in list(self.pids):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if sh(["ip", "netns", "list"], check=False)[1].split().count(self.ns):
            kill_ns_processes(self.ns)
            sh(["ip", "netns", "del", self.ns], check=False)
        self.guests = {}
        self.tgt = None


# ---- scenarios ------------------------------------------------------------------------------

def fence_lines(text):
    return [l for l in text.splitlines()
            if "preempted the peer's key" in l or "fencing agent: peer controller" in l]


def run_scenario(lab, scenario, mode, image):
    res = dict(scenario=scenario, mode=mode, ok=False, app_errors=None, lost_writes=None,
               stale_reads=None, corrupt_reads=None, max_stall_ms=None, fenced=None)
    checks = {}
    t_start = time.monotonic()
    failover = "manual" if scenario == "manual" else "automatic"
    log("=== scenario %s, mode %d ===" % (scenario, mode))
    lab.prepare_dirs()
    lab.net_up()
    lab.tgt_up()
    t = time.monotonic()
    lab.boot(list(GUESTS))
    res["boot_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    lab.controllers_up(mode, failover)
    lab.client_up()
    mp = lab.check_multipath()
    res["topology_s"] = round(time.monotonic() - t, 1)
    res["multipath_ll"] = mp.strip().splitlines()
    lab.start_workload()
    time.sleep(8)
    log_len = {n: len(read_text(os.path.join(lab.out, n, "duetd.log"))) for n in CTRLS}
    t_event = time.monotonic()
    prim, sec = "ctrl-a", "ctrl-b"

    def reboot_and_rejoin(name):
        lab.boot([name])
        lab.san_login(name)
        lab.start_duetd(name, mode, failover)
        lab.wait_role(name, "secondary", 120, link=2)
        log("%s: rejoined as secondary" % name)
        lab.check_multipath(90)
        checks["rejoined"] = True

    if scenario == "secondary-poweroff":
        lab.guests[sec].poweroff()
        time.sleep(10)
        checks["client_served"] = lab.ios_grow()
        reboot_and_rejoin(sec)
    elif scenario == "primary-poweroff":
        lab.guests[prim].poweroff()
        h = lab.wait_role(sec, "primary", 120)
        log("%s: primary (peer_fenced %s)" % (sec, h.get("peer_fenced")))
        checks["survivor_primary"] = True
        checks["client_served"] = lab.ios_grow()
        time.sleep(5)
        reboot_and_rejoin(prim)
    elif scenario == "primary-freeze":
        lab.guests[prim].qmp("stop")
        log("%s: frozen (QMP stop)" % prim)
        h = lab.wait_role(sec, "primary", 120)
        log("%s: primary while %s is frozen" % (sec, prim))
        checks["survivor_primary"] = True
        checks["client_served"] = lab.ios_grow()
        time.sleep(3)
        lab.guests[prim].qmp("cont")
        log("%s: resumed (QMP cont)" % prim)
        lab.wait_role(prim, "secondary", 120, link=2)
        log("%s: back as secondary" % prim)
        checks["rejoined"] = True
        text = read_text(os.path.join(lab.out, prim, "duetd.log"))[log_len[prim]:]
        checks["old_primary_refused_by_disk"] = bool(
            re.search(r"RESERVATION CONFLICT|fenced at the disk|EBADE|Fenced", text))
        lab.check_multipath(90)
    elif scenario == "ha-cut":
        ip = ["ip", "-n", lab.ns, "link", "set"]
        for n in CTRLS:
            sh(ip + [lab.guests[n].tap("ha"), "down"])
        log("HA network cut (both controllers' ports on br-ha down)")
        time.sleep(5)
        for n in CTRLS:
            sh(ip + [lab.guests[n].tap("ha"), "up"])
        log("HA network healed")
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            ra, _ = lab.role("ctrl-a")
            rb, hb = lab.role("ctrl-b")
            if {ra, rb} == {"primary", "secondary"} and hb and hb.get("link_state") == 2:
                break
            time.sleep(2)
        else:
            raise LabError("the pair did not settle after the HA cut")
        checks["pair_settled"] = True
        lab.check_multipath(90)
    elif scenario == "manual":
        lab.guests[prim].poweroff()
        time.sleep(12)
        r, h = lab.role(sec)
        checks["survivor_waits"] = r != "primary"
        res["survivor_role_before"] = r
        res["survivor_alua_before"] = h and h["luns"][0].get("local_alua")
        p0 = lab.progress() or {}
        time.sleep(4)
        p1 = lab.progress() or {}
        # How long the oldest I/O has waited (duet-blockcheck: waiting_ms; the stand-in:
        # idle_ms, the time since the last completion).
        queued = p1.get("waiting_ms", p1.get("idle_ms", 0)) or 0
        checks["io_queued"] = queued >= 3000
        res["queued_ms_before_role"] = queued
        dev = lab.paths().get(lab.guests[sec].addr("pub"))
        if dev:
            _, tur = lab.guests["cln-1"].run("sg_turs -v /dev/%s 2>&1; true" % dev, timeout=30)
            res["client_tur_survivor"] = " ".join(tur.split())[:300]
            checks["client_sees_transitioning"] = "transition" in tur.lower()
        _, mp = lab.guests["cln-1"].run("multipath -ll", timeout=30, check=False)
        res["multipath_ll_waiting"] = mp.strip().splitlines()
        log("%s: duetctl role primary" % sec)
        t_role = time.monotonic()
        lab.guests[sec].run("/duet/bin/duetctl --socket /run/duet/duetd.sock role primary",
                            timeout=30)
        lab.wait_role(sec, "primary", 60)
        checks["client_served"] = lab.ios_grow()
        res["resume_after_role_s"] = round(time.monotonic() - t_role, 1)
        del p0
    elif scenario == "switchover":
        lab.guests[prim].run("/duet/bin/duetctl --socket /run/duet/duetd.sock switchover",
                             timeout=30)
        log("%s: switchover asked" % prim)
        lab.wait_role(sec, "primary", 60)
        lab.wait_role(prim, "secondary", 60, link=2)
        checks["switched"] = True
        lab.check_multipath(60)
    elif scenario == "sigterm":
        lab.guests[prim].run("kill -TERM $(cat /run/duet/duetd.pid)")
        log("%s: SIGTERM to duetd" % prim)
        lab.wait_role(sec, "primary", 60)
        checks["survivor_primary"] = True
        checks["client_served"] = lab.ios_grow()
        lab.guests[prim].run("i=0; while kill -0 $(cat /run/duet/duetd.pid) 2>/dev/null; do "
                             "i=$((i+1)); [ $i -le 300 ] || exit 1; sleep 0.1; done", timeout=60)
        lab.start_duetd(prim, mode, failover)
        lab.wait_role(prim, "secondary", 120, link=2)
        checks["rejoined"] = True
        lab.check_multipath(90)
    res["event_to_settled_s"] = round(time.monotonic() - t_event, 1)
    time.sleep(8)
    checks["client_served_at_end"] = lab.ios_grow(60)
    wl = lab.stop_workload()
    for n, g in lab.guests.items():
        if g.alive():
            g.run("dmesg > /out/%s/dmesg.txt 2>&1; multipath -ll > /out/%s/multipath.txt 2>&1; "
                  "true" % (n, n), timeout=30, check=False)
    fl = []
    for n in CTRLS:
        fl += ["%s: %s" % (n, l.strip()[-200:])
               for l in fence_lines(read_text(os.path.join(lab.out, n, "duetd.log"))[log_len[n]:])]
    res["fenced"] = bool(fl)
    res["fence_log"] = fl[:6]
    for k in ("app_errors", "lost_writes", "stale_reads", "corrupt_reads", "max_stall_ms",
              "ios", "reads", "writes", "duration_ms"):
        res[k] = wl.get(k)
    res["stalls"] = wl.get("stalls", [])[:20]
    res["workload"] = wl.get("tool", "duet-blockcheck")
    if scenario in ("primary-poweroff", "primary-freeze"):
        checks["fenced"] = res["fenced"]
    if scenario in ("switchover", "sigterm"):
        checks["no_fence"] = not res["fenced"]
        checks["stall_under_1s"] = (res["max_stall_ms"] or 0) <= 1000
    res["checks"] = checks
    # Stall bounds are measurements on a shared, emulated machine: reported (`timing_ok`), and
    # part of `ok` only with --strict-timing.
    res["timing_ok"] = all(v for k, v in checks.items() if k in TIMING_CHECKS)
    counted = {k: v for k, v in checks.items() if STRICT_TIMING or k not in TIMING_CHECKS}
    res["ok"] = bool(wl.get("ok")) and all(counted.values()) and all(
        res[k] == 0 for k in ("app_errors", "lost_writes", "stale_reads", "corrupt_reads"))
    if not wl.get("ok") and wl.get("errors"):
        res["workload_errors"] = wl["errors"][:10]
    res["boot_times_s"] = {n: g.boot_s for n, g in lab.guests.items()}
    res["scenario_s"] = round(time.monotonic() - t_start, 1)
    return res


# Checks whose failure says something about the machine's speed, not about Duet's correctness.
TIMING_CHECKS = {"stall_under_1s"}
# Whether a missed stall bound fails the run (--strict-timing).
STRICT_TIMING = False
# Errors of the lab's own machinery (emulator, guest agent, tgt).
LAB_FAILURES = ("qemu exited while booting", "no agent socket", "the agent did not answer",
                "agent connection closed", ": agent: ", "tgtd did not come up",
                "qemu still running")


def why_failed(r):
    if r.get("error"):
        return "lab: " + r["error"][:200]
    bad = [k for k, v in (r.get("checks") or {}).items() if not v]
    return "checks: " + ", ".join(bad)


def retryable(r):
    """A failed run may be run again only when nothing in it speaks against Duet: the lab
    itself failed (no workload result at all), or only a timing bound was missed with the
    data intact, no I/O error and the fences as they should be."""
    if r.get("error"):
        # Only the emulator, the guests' agent or tgt failing: a role not reached, a duetd that
        # died or a multipath picture that is wrong are findings, never retried.
        return any(p in r["error"] for p in LAB_FAILURES)
    if any(r.get(k) for k in ("app_errors", "lost_writes", "stale_reads", "corrupt_reads")):
        return False
    bad = {k for k, v in (r.get("checks") or {}).items() if not v}
    return bool(bad) and bad <= TIMING_CHECKS and STRICT_TIMING


def main():
    global LOGF
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", required=True, choices=SCENARIOS + ["all"])
    ap.add_argument("--mode", type=int, choices=(0, 1, 2), default=1)
    ap.add_argument("--image", required=True)
    ap.add_argument("--bindir", required=True)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--strict-timing", action="store_true",
                    help="a missed stall bound (switchover, sigterm: 1 s) fails the run; by "
                         "default it is reported as timing_ok=false")
    ap.add_argument("--retries", type=int, default=0,
                    help="run a scenario again (up to N times) when it failed only on the lab "
                         "itself (a guest that did not boot, a step that timed out) or on a "
                         "stall bound; never when data was wrong, an I/O failed or a fence "
                         "was wrong")
    a = ap.parse_args()
    global STRICT_TIMING
    STRICT_TIMING = a.strict_timing
    if os.geteuid() != 0:
        print("run.sh must run as root (namespaces, taps, tgtd)", file=sys.stderr)
        return 2

    def on_signal(sig, _frame):
        raise KeyboardInterrupt("signal %d" % sig)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, on_signal)
    clean_leftovers()
    todo = MATRIX if a.scenario == "all" else [(a.scenario, a.mode)]
    results = []
    lab = Lab(a.image, a.bindir, a.keep)
    rc = 0
    try:
        attempts = [(sc, md, 0) for sc, md in todo]
        while attempts:
            scenario, mode, attempt = attempts.pop(0)
            try:
                shutil.rmtree(lab.run, ignore_errors=True)
                os.makedirs(lab.run)
                LOGF = open(os.path.join(lab.run, "lab.log"), "a")
                r = run_scenario(lab, scenario, mode, a.image)
            except LabError as e:
                log("FAILED: %s" % e)
                for n in ("ctrl-a", "ctrl-b", "cln-1"):
                    log("%s console tail:\n%s" % (n, tail(os.path.join(lab.run,
                                                                      n + ".console.log"), 15)))
                    if n in CTRLS:
                        log("%s duetd.log tail:\n%s" % (n, tail(os.path.join(lab.out, n,
                                                                            "duetd.log"), 25)))
                r = dict(scenario=scenario, mode=mode, ok=False, error=str(e)[:3000],
                         app_errors=None, lost_writes=None, stale_reads=None,
                         corrupt_reads=None, max_stall_ms=None, fenced=None)
            finally:
                lab.down()
                if LOGF:
                    LOGF.close()
                    LOGF = None
                if a.keep:
                    dest = "%s-%s-m%d" % (lab.run, scenario, mode)
                    shutil.rmtree(dest, ignore_errors=True)
                    if os.path.exists(lab.run):
                        os.rename(lab.run, dest)
                        open(os.path.join(dest, "keep"), "w").close()
                        log("kept the run directory: %s" % dest)
            r["attempt"] = attempt + 1
            log("result: %s" % json.dumps(r))
            if not r["ok"] and attempt < a.retries and retryable(r):
                log("%s mode %d failed on the lab or a stall bound only (%s): running it again"
                    % (scenario, mode, why_failed(r)))
                if a.scenario == "all":
                    print(json.dumps(r), flush=True)
                attempts.insert(0, (scenario, mode, attempt + 1))
                continue
            results.append(r)
            if not r["ok"]:
                rc = 1
            if a.scenario == "all":
                print(json.dumps(r), flush=True)
    except KeyboardInterrupt as e:
        log("interrupted (%s): cleaning up" % e)
        lab.down()
        rc = 130
        results.append(dict(scenario=a.scenario, mode=a.mode, ok=False, error="interrupted",
                            app_errors=None, lost_writes=None, stale_reads=None,
                            corrupt_reads=None, max_stall_ms=None, fenced=None))
    finally:
        lab.down()
        if LOGF:
            LOGF.close()
            LOGF = None
        if not a.keep:
            shutil.rmtree(lab.run, ignore_errors=True)
    if a.scenario == "all":
        summary = dict(scenario="all", ok=rc == 0 and len(results) == len(MATRIX),
                       passed=sum(1 for r in results if r.get("ok")), total=len(MATRIX),
                       timing_missed=["%s/%d" % (r["scenario"], r["mode"]) for r in results
                                      if r.get("timing_ok") is False],
                       max_stall_ms={"%s/%d" % (r["scenario"], r["mode"]): r.get("max_stall_ms")
                                     for r in results})
        print(json.dumps(summary), flush=True)
    else:
        print(json.dumps(results[-1]), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
