"""One SFTP destination: put a durable file on the server, complete and verified, or say why not.

The upload goes to a hidden temporary name in the remote directory, is flushed to disk where
the server offers ``fsync@openssh.com``, has its size checked, and is renamed into place with
the plain SFTP rename, which never replaces an existing file.  So the final name only ever
holds a complete file, two replicas (or a retry after a crash) that upload the same file at
once cannot mix their bytes (each writes its own temporary name), and a different file already
under the name is a conflict, never overwritten.  A file already there with the same size is
read back and hashed (OpenSSH's server cannot hash a file for us): the same bytes mean the
delivery was done before.

Errors are classified once, here: ``DeliveryError.terminal`` for what a retry cannot fix (the
host key, the credentials, permissions, a missing directory, a conflict), transient otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import posixpath
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncssh

from stream_app.config import SftpDestinationSettings
from stream_app.core.naming import UnsafeFileName, remote_file_name
from stream_app.ops.faults import failpoint
from stream_app.pipeline.outbox import Delivery, Receipt

log = logging.getLogger(__name__)

READ_BACK_CHUNK = 256 * 1024


class DeliveryError(Exception):
    """A delivery attempt that failed; ``error_class`` is stable (HOST_KEY, AUTH, PERMISSION,
    CONFLICT, CONNECT, ...), and the message never holds file contents."""

    def __init__(self, message: str, error_class: str, terminal: bool) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.terminal = terminal


def classify(exc: BaseException, what: str) -> DeliveryError:
    """The ``DeliveryError`` for what the client raised while doing ``what``."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return DeliveryError(f"{what}: host key not verifiable against the pinned known_hosts ({exc.reason})",
                             "HOST_KEY", True)
    if isinstance(exc, asyncssh.PermissionDenied):
        return DeliveryError(f"{what}: authentication refused ({exc.reason})", "AUTH", True)
    if isinstance(exc, (asyncssh.KeyImportError, asyncssh.KeyEncryptionError)):
        return DeliveryError(f"{what}: the private key cannot be used ({exc})", "KEY_FILE", True)
    if isinstance(exc, asyncssh.SFTPPermissionDenied | asyncssh.SFTPWriteProtect):
        return DeliveryError(f"{what}: permission denied ({exc.reason})", "PERMISSION", True)
    if isinstance(exc, asyncssh.SFTPNoSuchFile | asyncssh.SFTPNoSuchPath | asyncssh.SFTPNotADirectory):
        return DeliveryError(f"{what}: no such remote path ({exc.reason})", "REMOTE_PATH", True)
    if isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection):
        return DeliveryError(f"{what}: disconnected ({exc.reason})", "DISCONNECTED", False)
    if isinstance(exc, asyncssh.SFTPError):
        return DeliveryError(f"{what}: the server failed ({exc.reason})", "REMOTE_FAILURE", False)
    if isinstance(exc, asyncssh.DisconnectError):
        return DeliveryError(f"{what}: disconnected ({exc.reason})", "DISCONNECTED", False)
    if isinstance(exc, TimeoutError):
        return DeliveryError(f"{what}: timed out", "TIMEOUT", False)
    if isinstance(exc, ConnectionError | OSError):
        reason = exc.strerror or type(exc).__name__
        return DeliveryError(f"{what}: {reason}", "CONNECT", False)
    return DeliveryError(f"{what}: {type(exc).__name__}", "UNEXPECTED", False)


# AES-GCM first: OpenSSL does it in hardware, while asyncssh's chacha20-poly1305 (its default
# first choice) spends Python time on every packet (bench/delivery_bench.py: most of the CPU).
_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
            "aes128-ctr", "aes192-ctr", "aes256-ctr"]

# Failures after which the connection is not used again (the server's SFTP answers leave it usable).
_CONNECTION_BROKEN = frozenset({"DISCONNECTED", "TIMEOUT", "CONNECT", "UNEXPECTED"})

ChunkReader = Callable[[], AsyncIterator[bytes]]


def check_credentials(settings: SftpDestinationSettings) -> tuple[str, str] | None:
    """(config key, what is wrong) when the destination's key or known_hosts cannot be used;
    preflight runs it, so a worker never starts with credentials it cannot read."""
    passphrase = os.environ.get(settings.passphraseEnv) if settings.passphraseEnv else None
    if settings.passphraseEnv and passphrase is None:
        return "passphraseEnv", f"environment variable {settings.passphraseEnv} is not set"
    try:
        asyncssh.read_private_key(settings.privateKeyFile, passphrase)
    except OSError as exc:
        return "privateKeyFile", f"cannot read {settings.privateKeyFile}: {exc.strerror}"
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        return "privateKeyFile", f"{settings.privateKeyFile} is not a usable private key ({exc})"
    try:
        known = asyncssh.read_known_hosts(settings.knownHostsFile)
    except OSError as exc:
        return "knownHostsFile", f"cannot read {settings.knownHostsFile}: {exc.strerror}"
    except ValueError as exc:
        return "knownHostsFile", f"{settings.knownHostsFile} is not a known_hosts file ({exc})"
    host = settings.host if settings.port == 22 else f"[{settings.host}]:{settings.port}"
    trusted = known.match(settings.host, "", settings.port)[0]
    if not trusted:
        return "knownHostsFile", f"{settings.knownHostsFile} pins no key for {host}: add the server's host key"
    return None


class SftpDestination:
    """Uploads to one server over one SSH connection, opened on first use and again after it
    broke; uploads of different files share it (``maxParallel`` of them at once)."""

    def __init__(self, settings: SftpDestinationSettings, worker_id: str) -> None:
        self.settings = settings
        self.name = settings.name
        # each uploader has its own temporary names: a replica's upload never writes into another's
        self._temp_tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in worker_id)[:40] or "worker"
        self._conn: Any = None
        self._sftp: Any = None
        self._connecting = asyncio.Lock()
        self.fingerprint = ""

    def remote_path(self, d: Delivery) -> str:
        try:
            name = remote_file_name(self.settings.remoteName, d.name, d.part, d.window_start)
        except (UnsafeFileName, KeyError, ValueError) as exc:
            raise DeliveryError(f"remote name for {d.name}: {exc}", "REMOTE_NAME", True) from None
        return posixpath.join(self.settings.remoteDir, name)

    async def _client(self) -> Any:
        async with self._connecting:
            if self._sftp is not None:
                return self._sftp
            s = self.settings
            passphrase = os.environ.get(s.passphraseEnv) if s.passphraseEnv else None
            where = f"{s.name} ({s.host}:{s.port})"
            try:
                conn = await asyncio.wait_for(asyncssh.connect(
                    s.host, s.port, username=s.username, known_hosts=s.knownHostsFile,
                    client_keys=[s.privateKeyFile], passphrase=passphrase, agent_path=None,
                    preferred_auth="publickey", config=None, connect_timeout=s.connectTimeoutSeconds,
                    encryption_algs=_CIPHERS,
                    keepalive_interval=30), s.connectTimeoutSeconds * 2)
            except Exception as exc:
                raise classify(exc, f"connecting to {where}") from None
            try:
                sftp = await asyncio.wait_for(conn.start_sftp_client(), s.timeoutSeconds)
            except Exception as exc:
                conn.close()
                raise classify(exc, f"starting SFTP on {where}") from None
            key = conn.get_server_host_key()
            self.fingerprint = key.get_fingerprint("sha256") if key is not None else ""
            self._conn, self._sftp = conn, sftp
            return sftp

    async def close(self) -> None:
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except Exception:
                pass

    async def _op(self, what: str, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, self.settings.timeoutSeconds)
        except Exception as exc:
            error = classify(exc, what)
            if error.error_class in _CONNECTION_BROKEN:  # the next attempt opens a new connection
                await self.close()
            raise error from None

    async def deliver(self, d: Delivery, read: ChunkReader, tidy: bool = True) -> Receipt:
        """Put ``d`` on the server; ``read()`` yields the sink copy's bytes (called at most once).
        ``tidy``: an earlier uploader may have left temporary files of it (a retry, a delivery
        recovered after a crash or a rebalance): clear them once the file is in place (it lists
        the remote directory, which costs a quarter of the throughput when done for every file)."""
        remote = self.remote_path(d)
        sftp = await self._client()
        existing = await self._existing(sftp, remote, d)
        if existing is not None:
            return existing
        directory, final = posixpath.split(remote)
        temp = posixpath.join(directory, f".{final}.{self._temp_tag}.part")
        digest = hashlib.sha256()
        size = 0
        chunks = read().__aiter__()
        first = await anext(chunks, b"")  # the sink copy is readable before anything is put remotely
        handle = await self._op(f"opening {temp}", sftp.open(temp, "wb"))
        try:
            chunk = first
            while chunk:
                await self._op(f"writing {temp}", handle.write(chunk, size))
                digest.update(chunk)
                size += len(chunk)
                chunk = await anext(chunks, b"")
            if digest.hexdigest() != d.sha256 or size != d.bytes:
                # the system of record does not hold what the journal says was written
                raise DeliveryError(f"the sink copy of {d.name} is not the file that was written "
                                    f"({size} bytes, expected {d.bytes})", "COPY_MISMATCH", True)
            if self.settings.fsync:
                await self._fsync(handle, temp)
        finally:
            try:
                await asyncio.wait_for(handle.close(), self.settings.timeoutSeconds)
            except Exception:
                pass  # the connection is gone: the upload is retried under the same temporary name
        try:
            stat = await self._op(f"checking {temp}", sftp.stat(temp))
            if stat.size != d.bytes:
                raise DeliveryError(f"{temp} holds {stat.size} bytes after the upload, expected {d.bytes}",
                                    "SIZE_MISMATCH", False)
            failpoint("delivery.before-rename")  # the whole file under its temporary name, not yet in place
            await self._op(f"renaming {temp} to {final}", sftp.rename(temp, remote))
        except DeliveryError as failed:
            if failed.error_class in _CONNECTION_BROKEN:
                raise
            # The plain rename refuses an existing name, and another uploader that finished first
            # clears the temporary names of this file: is the file in place already?
            existing = await self._existing(sftp, remote, d)
            await self._remove_quietly(sftp, temp)
            if existing is not None:
                return existing
            if failed.error_class == "REMOTE_PATH":  # the temporary file went away: upload again
                raise DeliveryError(f"{temp} was removed during the upload", "TEMP_REMOVED", False) from None
            raise
        if tidy:
            await self._remove_leftovers(sftp, directory, final)
        return Receipt(remote, d.bytes, d.sha256, self.fingerprint)

    async def _fsync(self, handle: Any, temp: str) -> None:
        try:
            await asyncio.wait_for(handle.fsync(), self.settings.timeoutSeconds)
        except asyncssh.SFTPOpUnsupported:
            pass  # the server offers no fsync@openssh.com: its rename is the last word
        except Exception as exc:
            await self.close()
            raise classify(exc, f"fsync {temp}") from None

    async def _existing(self, sftp: Any, remote: str, d: Delivery) -> Receipt | None:
        """A receipt when ``remote`` already holds this file; ``CONFLICT`` when it holds another."""
        try:
            stat = await self._op(f"checking {remote}", sftp.stat(remote))
        except DeliveryError as exc:
            if exc.error_class == "REMOTE_PATH":
                return None
            raise
        if stat.size == d.bytes and await self._remote_sha256(sftp, remote) == d.sha256:
            return Receipt(remote, d.bytes, d.sha256, self.fingerprint, already_there=True)
        raise DeliveryError(f"{remote} exists on {self.name} with different content ({stat.size} bytes); "
                            "refusing to overwrite", "CONFLICT", True)

    async def _remote_sha256(self, sftp: Any, remote: str) -> str:
        digest = hashlib.sha256()
        handle = await self._op(f"reading {remote}", sftp.open(remote, "rb"))
        try:
            offset = 0
            while True:
                chunk = await self._op(f"reading {remote}", handle.read(READ_BACK_CHUNK, offset))
                if not chunk:
                    return digest.hexdigest()
                digest.update(chunk)
                offset += len(chunk)
        finally:
            try:
                await asyncio.wait_for(handle.close(), self.settings.timeoutSeconds)
            except Exception:
                pass

    async def _remove_quietly(self, sftp: Any, path: str) -> None:
        try:
            await asyncio.wait_for(sftp.remove(path), self.settings.timeoutSeconds)
        except Exception:
            pass

    async def _remove_leftovers(self, sftp: Any, directory: str, final: str) -> None:
        """Temporary files of this name that a crashed or moved uploader left behind: the file
        is in place now, so they are of no use (an upload of them still running fails, and its
        retry finds the file there)."""
        try:
            names = await asyncio.wait_for(sftp.listdir(directory or "."), self.settings.timeoutSeconds)
        except Exception:
            return
        prefix = f".{final}."
        for name in names:
            if isinstance(name, str) and name.startswith(prefix) and name.endswith(".part"):
                await self._remove_quietly(sftp, posixpath.join(directory, name))
