"""A real OpenSSH server (Debian's openssh-server) on a loopback port, for the delivery tests.

Each ``Sshd`` has its own generated host key, a generated user key for the user running the
tests, and its own config: ``sftp_flags`` go to ``internal-sftp`` (``-R``: a read-only server,
whose writes are refused with "permission denied").  ``.ci/run`` installs openssh-server; the
tests skip without ``/usr/sbin/sshd``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from stream_app.tools.broker import free_port

SSHD = Path("/usr/sbin/sshd")


def sshd_missing() -> str | None:
    if not SSHD.exists():
        return "OpenSSH's sshd is not installed (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is not installed"
    return None


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class Sshd:
    def __init__(self, workdir: Path, sftp_flags: str = "", user_key: Path | None = None) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = keygen(workdir / "host_ed25519")
        self.user_key = user_key or keygen(workdir / "user_ed25519")
        (workdir / "authorized_keys").write_text(Path(f"{self.user_key}.pub").read_text())
        self.known_hosts = workdir / "known_hosts"
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.remote_dir = workdir / "inbound"
        self.remote_dir.mkdir(exist_ok=True)
        self.config = workdir / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"PidFile {workdir / 'sshd.pid'}", f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no", "LogLevel ERROR",
            f"Subsystem sftp internal-sftp {sftp_flags}".rstrip(), "",
        ]))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Sshd:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "sshd.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            # the open sessions are the listener's children: end them too, as a server that went away
            subprocess.run(["pkill", "-KILL", "-P", str(self.proc.pid)], check=False)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def destination(self, name: str = "bank", **overrides: object) -> dict:
        """A ``delivery.sftp`` entry for this server."""
        return {"name": name, "host": "127.0.0.1", "port": self.port, "username": self.user,
                "privateKeyFile": str(self.user_key), "knownHostsFile": str(self.known_hosts),
                "remoteDir": str(self.remote_dir), "connectTimeoutSeconds": 3, "timeoutSeconds": 10,
                "retryInitialMs": 100, "retryMaxMs": 1000, **overrides}
