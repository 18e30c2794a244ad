"""The reference RabbitMQ: reach or start it, find its processes, restart it for i."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

from .paths import RABBITMQ_LOCAL, log
from .procs import pids_by_comm, read_status, tcp_open


def ensure_rabbitmq(url: str) -> None:
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 5672
    if tcp_open(host, port):
        return
    if host not in ("127.0.0.1", "localhost", "::1") or not RABBITMQ_LOCAL.exists():
        raise SystemExit(f"RabbitMQ at {host}:{port} is not reachable")
    log(f"RabbitMQ not reachable on {host}:{port}; starting it with {RABBITMQ_LOCAL}")
    env = dict(os.environ, RMQ_PORT=str(port))
    subprocess.run([*rabbitmq_start_prefix(), str(RABBITMQ_LOCAL), "start"], check=True, env=env)
    for _ in range(100):
        if tcp_open(host, port):
            return
        time.sleep(0.2)
    raise SystemExit(f"RabbitMQ did not come up on {host}:{port}")


def rabbitmq_node_pid(url: str) -> int | None:
    """The node's beam.smp pid from rabbitmq-local.sh's pid file (None if not found)."""
    port = urllib.parse.urlsplit(url).port or 5672
    base = Path(os.environ.get("RMQ_BASE", f"/tmp/rabbitmq-ref-{port}"))
    with contextlib.suppress(OSError, ValueError):
        pid = int((base / "pid").read_text().strip())
        if Path(f"/proc/{pid}").exists():
            return pid
    pids = pids_by_comm("beam.smp")
    return max(pids, key=lambda p: read_status(p).get("VmRSS", 0)) if pids else None


def rabbitmq_server_pids() -> list[int]:
    """beam.smp processes that are RabbitMQ nodes (``-s rabbit boot``), not rabbitmqctl."""
    out = []
    for pid in pids_by_comm("beam.smp"):
        with contextlib.suppress(OSError):
            if b"\0rabbit\0boot\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def rabbitmq_start_prefix() -> list[str]:
    """How to run rabbitmq-local.sh start so that the node keeps our RLIMIT_NOFILE.

    Debian's /usr/sbin/rabbitmq-server, run as root, switches to the rabbitmq user with
    `su`, and PAM then resets the soft open-files limit to 1024 (RabbitMQ: socket limit 832,
    too low for scenario h). Started as the rabbitmq user directly (setpriv, no PAM), the
    node inherits this process's raised limit."""
    import pwd

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return []
    try:
        pw = pwd.getpwnam("rabbitmq")
    except KeyError:
        return []
    return [
        "setpriv",
        f"--reuid={pw.pw_uid}",
        f"--regid={pw.pw_gid}",
        "--init-groups",
        "env",
        f"HOME={pw.pw_dir}",
    ]


def rabbitmq_foreign_connections(url: str) -> list[str] | None:
    """Names of the client connections open on the node (management API; None if it
    cannot be asked). Used to avoid restarting a RabbitMQ that somebody else is using."""
    import base64
    import urllib.request

    u = urllib.parse.urlsplit(url)
    mgmt = int(os.environ.get("RMQ_MGMT_PORT", (u.port or 5672) + 10000))
    req = urllib.request.Request(f"http://{u.hostname or '127.0.0.1'}:{mgmt}/api/connections")
    user = urllib.parse.unquote(u.username or "guest")
    cred = f"{user}:{urllib.parse.unquote(u.password or 'guest')}"
    req.add_header("Authorization", "Basic " + base64.b64encode(cred.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            conns = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return [
        (c.get("client_properties") or {}).get("connection_name") or c.get("name", "?")
        for c in conns
    ]


def restart_rabbitmq(url: str, mode: str) -> dict:
    """Stop (gracefully, or SIGKILL the node) and start the rabbitmq-local.sh node."""
    port = urllib.parse.urlsplit(url).port or 5672
    env = dict(os.environ, RMQ_PORT=str(port))
    node = rabbitmq_node_pid(url)
    if mode == "kill":
        if node:
            os.kill(node, signal.SIGKILL)
            for _ in range(100):
                if not Path(f"/proc/{node}").exists():
                    break
                time.sleep(0.1)
    else:
        subprocess.run([str(RABBITMQ_LOCAL), "stop"], env=env, capture_output=True, timeout=300)
    t0 = time.monotonic()
    p = subprocess.run(
        [*rabbitmq_start_prefix(), str(RABBITMQ_LOCAL), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return {
        "start_s": time.monotonic() - t0,
        "t0": t0,
        "rc": p.returncode,
        "out": (p.stdout + p.stderr)[-1000:],
    }
