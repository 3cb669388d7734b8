"""`codeb ssh-serve`: the console over SSH (asyncssh), one console process per session.

The server authenticates operators by public key only and offers one thing: a console on a
pseudo-terminal. Passwords, keyboard-interactive, exec, subsystems (SFTP), port, socket and
agent forwarding are refused; each refusal is logged and audited with the key's fingerprint.

Each session gets a console process (`console_command`, the CLI's hidden `ssh-console`) on a
pty of its own. The process is started ahead (`ssh.spare_consoles`): it has loaded Python,
Textual and codeb and waits on a pipe; when a session comes the pty gets the client's size and
the pipe the operator's name and TERM, so the first frame waits for none of that loading. The
console made the pty its controlling terminal, so a resize set on the master reaches it as
SIGWINCH. When the client leaves or idles out the console gets SIGHUP: it lets its running
operations end, audits "session ended" and exits; it is never killed, so no operation is cut
mid-switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from codeb_tui.domain.config import Config, listen_address
from codeb_tui.engine.facade import Engine
from codeb_tui.ssh.operators import Operator, OperatorStore

log = logging.getLogger("codeb.ssh")

HOST_KEY_NAME = "ssh_host_ed25519_key"
DEFAULT_TERM = "xterm-256color"
READ_CHUNK = 65536
SPARE_AFTER = 2.0
"""Seconds after a session took a spare console before the next one is started."""

ConsoleCommand = Callable[[int], list[str]]
"""The argv of a console process, given the pipe it reads its session from (operator, TERM)."""


@dataclass
class Console:
    """A console process on its pty, waiting to be told whose session it is."""

    process: asyncio.subprocess.Process
    master: int
    control: int
    """The write end of the pipe the console reads its session from."""

    def assign(self, operator: str, term: str) -> None:
        with os.fdopen(self.control, "w") as pipe:
            pipe.write(json.dumps({"operator": operator, "term": term}) + "\n")

    def discard(self) -> None:
        """Never assigned: closing the pipe tells it to exit; its pty goes with it."""
        with contextlib.suppress(OSError):
            os.close(self.control)
        with contextlib.suppress(OSError):
            os.close(self.master)


def host_key(state_dir: Path) -> asyncssh.SSHKey:
    """The server's key, made on first start; kept 0600 (made so again if someone widened it)."""
    path = state_dir / HOST_KEY_NAME
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.export_private_key())
        log.info("made the host key %s (%s)", path, key.get_fingerprint())
        return key
    if path.stat().st_mode & 0o077:
        log.warning("%s was readable by others: made 0600 again", path)
        path.chmod(0o600)
    return asyncssh.read_private_key(str(path))


def set_window_size(fd: int, columns: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


class ConsoleServer:
    """The listening server and its sessions."""

    def __init__(self, config: Config, engine: Engine, console_command: ConsoleCommand) -> None:
        self.config = config
        self.engine = engine
        self.console_command = console_command
        self.operators = OperatorStore(config)
        self.operators.all()  # a bad key in config or the store stops the start, naming it
        self.sessions: set[ConsoleSession] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._audits: set[asyncio.Task] = set()
        self._spares: list[asyncio.Task[Console]] = []
        self._stopping = False

    async def start(self, listen: str | None = None) -> tuple[str, int]:
        host, port = listen_address(listen or self.config.ssh.listen)
        self._acceptor = await asyncssh.create_server(
            lambda: Connection(self), host or None, port,
            server_host_keys=[host_key(self.config.ssh.state_dir)],
            encoding=None, allow_pty=True, agent_forwarding=False, x11_forwarding=False,
            sftp_factory=None, allow_scp=False, login_timeout=30, keepalive_interval=30)
        self._keep_spares()
        address = self._acceptor.sockets[0].getsockname()
        return address[0], address[1]

    # console processes -------------------------------------------------------------------------
    async def _spawn(self) -> Console:
        master, slave = os.openpty()
        control_read, control_write = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        try:
            process = await asyncio.create_subprocess_exec(
                *self.console_command(control_read), stdin=slave, stdout=slave, stderr=slave,
                env=env, start_new_session=True, pass_fds=(control_read,))
        except BaseException:
            os.close(master)
            os.close(control_write)
            raise
        finally:
            os.close(slave)
            os.close(control_read)
        return Console(process, master, control_write)

    def _keep_spares(self) -> None:
        if self._acceptor is None or self._stopping:
            return
        while len(self._spares) < self.config.ssh.spare_consoles:
            self._spares.append(asyncio.get_running_loop().create_task(self._spawn()))

    async def take_console(self) -> Console:
        """A started console (one that died meanwhile is replaced), and a new spare behind it."""
        while self._spares:
            console = await self._spares.pop(0)
            if console.process.returncode is None:
                break
            console.discard()
        else:
            console = await self._spawn()
        # The next spare starts once this console has drawn: loading Python and Textual beside
        # its first frame would slow that frame down (measured: bench/ssh.py).
        asyncio.get_running_loop().call_later(SPARE_AFTER, self._keep_spares)
        return console

    async def stop(self) -> None:
        """Stop accepting, hang up every session and wait for their consoles to end (each lets
        its running operations finish first)."""
        self._stopping = True
        if self._acceptor is not None:
            self._acceptor.close()
        spares, self._spares = self._spares, []
        for console in await asyncio.gather(*spares, return_exceptions=True):
            if isinstance(console, Console):
                console.discard()
                await console.process.wait()
        await asyncio.gather(*(s.hang_up("the server is stopping") for s in list(self.sessions)))
        if self._audits:
            await asyncio.gather(*self._audits, return_exceptions=True)

    def refuse(self, what: str, actor: str, reason: str, **detail: object) -> None:
        """Log and audit one refusal (audited in the background: the client is answered now)."""
        log.warning("refused %s for %s: %s %s", what, actor, reason,
                    " ".join(f"{k}={v}" for k, v in detail.items()))
        team = None
        name = actor.removeprefix("ssh:")
        with contextlib.suppress(Exception):
            found = self.operators.find(name)
            team = found.team if found else None
        task = asyncio.get_running_loop().create_task(self.engine.audit_event(
            actor, team, what, "refused", {"reason": reason, **detail}))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)


class Connection(asyncssh.SSHServer):
    """One client connection: public-key authentication, refusals of everything but a console."""

    def __init__(self, server: ConsoleServer) -> None:
        self.server = server
        self.conn: asyncssh.SSHServerConnection | None = None
        self.operator: Operator | None = None
        self.fingerprint = ""
        self.peer = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        # asyncssh refuses agent and X11 forwarding by itself (create_server says so) without
        # telling this object; these two methods of the connection are where it asks, so those
        # refusals are logged and audited like the others.
        conn.create_agent_listener = self._refuse_agent  # type: ignore[method-assign]
        conn.attach_x11_listener = self._refuse_x11  # type: ignore[method-assign]

    async def _refuse_agent(self) -> bool:
        return self._refuse("ssh.forward", "agent forwarding is not offered")

    async def _refuse_x11(self, *request: object) -> None:
        self._refuse("ssh.forward", "X11 forwarding is not offered")

    @property
    def actor(self) -> str:
        username = self.conn.get_extra_info("username") if self.conn else None
        return f"ssh:{username or '?'}"

    def _refuse(self, what: str, reason: str, **detail: object) -> bool:
        self.server.refuse(what, self.actor, reason, fingerprint=self.fingerprint or None,
                           peer=self.peer, **detail)
        return False

    # authentication: public keys only ------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        operator = self.server.operators.find(username)
        if operator is not None and operator.holds(key):
            self.operator, self.fingerprint = operator, key.get_fingerprint()
            return True
        why = "unknown operator" if operator is None else "key not one of the operator's"
        self.server.refuse("ssh.login", f"ssh:{username}", why, fingerprint=key.get_fingerprint(),
                           peer=self.peer)
        return False

    # everything but a console is refused ---------------------------------------------------
    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:
        return self._refuse("ssh.forward", "port forwarding is not offered",
                            target=f"{dest_host}:{dest_port}")

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return self._refuse("ssh.forward", "remote port forwarding is not offered",
                            listen=f"{listen_host}:{listen_port}")

    def unix_connection_requested(self, dest_path: str) -> bool:
        return self._refuse("ssh.forward", "socket forwarding is not offered", target=dest_path)

    def unix_server_requested(self, listen_path: str) -> bool:
        return self._refuse("ssh.forward", "socket forwarding is not offered", listen=listen_path)

    def session_requested(self) -> ConsoleSession | bool:
        if self.operator is None:
            return False
        return ConsoleSession(self)


class ConsoleSession(asyncssh.SSHServerSession):
    """One SSH session: a pty, the console process on it, and the bytes between them."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.server = connection.server
        self.operator: Operator = connection.operator  # type: ignore[assignment]
        self.chan: asyncssh.SSHServerChannel | None = None
        self.term: str | None = None
        self.size = (80, 24)
        self.master: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.closing_message: str | None = None
        self._client_gone = False
        self._idle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._hung_up = False

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan

    # requests ------------------------------------------------------------------------------
    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: object) -> bool:
        self.term = term_type or DEFAULT_TERM
        if term_size[0] and term_size[1]:
            self.size = (term_size[0], term_size[1])
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        return self.connection._refuse("ssh.exec", "commands are not run, only the console",
                                       command=command[:200])

    def subsystem_requested(self, subsystem: str) -> bool:
        return self.connection._refuse("ssh.subsystem", f"subsystem {subsystem} is not offered",
                                       subsystem=subsystem[:100])

    def session_started(self) -> None:
        assert self.chan is not None
        if self.term is None:
            self.connection._refuse("ssh.session", "no terminal requested")
            self._say_and_exit("codeb: this server offers the console only: connect with a "
                               "terminal (ssh -t)", 1)
            return
        limit = self.server.config.ssh.max_sessions
        if len(self.server.sessions) >= limit:
            self.connection._refuse("ssh.session", "maximum sessions reached", max_sessions=limit)
            self._say_and_exit(f"codeb: {limit} sessions are open, the most this server takes "
                               "(ssh.max_sessions); try again later", 1)
            return
        self.server.sessions.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _say_and_exit(self, message: str, status: int) -> None:
        assert self.chan is not None
        self.chan.write(f"{message}\r\n".encode())
        self.chan.exit(status)

    # the console process --------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        status = 1
        try:
            console = await self.server.take_console()
        except Exception:
            log.exception("no console process for %s", self.operator.name)
            self._end(status)
            return
        if self._client_gone:  # left while it was being started: it goes back unused
            console.discard()
            await console.process.wait()
            self._end(status)
            return
        self.process, self.master = console.process, console.master
        master = console.master
        try:
            set_window_size(master, *self.size)  # before it draws: its first frame fits
            console.assign(self.operator.name, self.term or DEFAULT_TERM)
            log.info("session of %s (%s) started: console pid %s, %sx%s %s",
                     self.operator.name, self.connection.fingerprint, self.process.pid,
                     *self.size, self.term)
            os.set_blocking(master, False)
            loop.add_reader(master, self._from_console)
            self._touch()
            status = await self.process.wait()
            with contextlib.suppress(OSError):  # what it wrote last (the terminal restored)
                while chunk := os.read(master, READ_CHUNK):
                    self._to_client(chunk)
        except Exception:
            log.exception("session of %s failed", self.operator.name)
        finally:
            loop.remove_reader(master)
            os.close(master)
            self.master = None
            self._end(status)

    def _end(self, status: int) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.server.sessions.discard(self)
        log.info("session of %s ended (console exit %s)", self.operator.name, status)
        if not self._client_gone and self.chan is not None:
            if self.closing_message:
                self.chan.write(f"\r\n{self.closing_message}\r\n".encode())
            self.chan.exit(status if status >= 0 else 1)

    def _from_console(self) -> None:
        assert self.master is not None
        try:
            data = os.read(self.master, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the console closed the terminal
            asyncio.get_running_loop().remove_reader(self.master)
            return
        self._to_client(data)

    def _to_client(self, data: bytes) -> None:
        # After the client left, the console's output is read and dropped: it must never block
        # on a full pty while it finishes an operation.
        if data and not self._client_gone and self.chan is not None:
            self.chan.write(data)

    async def hang_up(self, reason: str) -> None:
        """Tell the console its terminal is gone; wait until it has ended."""
        if self.process is not None and self.process.returncode is None and not self._hung_up:
            self._hung_up = True
            log.info("hanging up the session of %s: %s", self.operator.name, reason)
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGHUP)
        if self._task is not None:
            await asyncio.shield(self._task)

    # what the client sends -------------------------------------------------------------------
    def data_received(self, data: bytes, datatype: object) -> None:
        self._touch()
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.write(self.master, data)

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if width and height:
            self.size = (width, height)
            if self.master is not None:
                set_window_size(self.master, width, height)

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        timeout = self.server.config.ssh.idle_timeout
        self._idle = asyncio.get_running_loop().call_later(timeout, self._idled_out, timeout)

    def _idled_out(self, timeout: float) -> None:
        self.closing_message = (f"codeb: no key pressed for {timeout:g} s (ssh.idle_timeout): "
                                "session closed")
        asyncio.get_running_loop().create_task(self.hang_up("idle timeout"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_gone = True
        if self.process is not None:
            asyncio.get_running_loop().create_task(self.hang_up("client disconnected"))


async def serve(config: Config, console_command: ConsoleCommand, listen: str | None = None,
                ready: Callable[[str, int], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT; then hang up every session and wait for them."""
    async with Engine(config) as engine:
        server = ConsoleServer(config, engine, console_command)
        host, port = await server.start(listen)
        log.info("codeb ssh-serve listening on %s:%s", host, port)
        if ready is not None:
            ready(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("stopping: hanging up %s session(s)", len(server.sessions))
            await server.stop()
