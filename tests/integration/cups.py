"""A private CUPS server (`cupsd`) with one queue in front of a real `ippeveprinter`, as an
operator would put CUPS between the service and a printer.

Everything of the server lives under the test's directory: its ServerRoot (cupsd.conf,
printers.conf), state (its printcap too), cache, spool (RequestRoot), temp and log
directories; it listens on a free port of 127.0.0.1 only, never on 631 nor on the system's
socket, and never reads /etc/cups nor writes /run/cups. Its policy lets anyone on
loopback do everything without authentication: the test's `lpadmin` and the service alike.

The one backend the queue needs (`ipp`) runs as root: cupsd runs a backend as its `User`
(lp) unless only its owner may execute its file (0700), and lp cannot reach the
job's spool file under the test's directory (pytest's base temp directory is 0700 root).
So the server's ServerBin is a directory of our own: the system's, except for `backend/`,
which holds one 0700 wrapper that executes the system's `ipp` backend.

The queue is a raw one (`lpadmin -m raw`: deprecated in CUPS 2.4, still working): CUPS
passes the document on as it came, so the printer behind it spools the very bytes sent.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tests.integration.ippeve import IppEvePrinter, free_port
from tests.waits import wait_until

__all__ = ["INSTALL_HINT", "CupsServer", "CupsUnavailableError"]

INSTALL_HINT: Final = "cupsd, lpadmin or lpstat not found: apt-get install cups"
# cupsd and lpadmin are installed in sbin, which is not on every user's PATH.
_SBIN: Final = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# Where distributions install CUPS's programs (backends, filters, cups-exec).
_SERVER_BINS: Final = ("/usr/lib/cups", "/usr/libexec/cups", "/usr/local/lib/cups")
_START_TIMEOUT_S: Final = 15.0
_STOP_TIMEOUT_S: Final = 10.0

_CUPSD_CONF: Final = """\
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
LogLevel debug
MaxLogSize 0
Browsing No
BrowseLocalProtocols none
WebInterface No
DefaultAuthType None
# Jobs stay listed once completed (lpstat -W completed), with every attribute visible.
PreserveJobHistory Yes
<Location />
  Order allow,deny
  Allow from 127.0.0.1
</Location>
<Policy default>
  JobPrivateAccess all
  JobPrivateValues none
  SubscriptionPrivateAccess all
  SubscriptionPrivateValues none
  <Limit All>
    Order allow,deny
    Allow from 127.0.0.1
  </Limit>
</Policy>
"""

_CUPS_FILES_CONF: Final = """\
ServerRoot {root}/etc
StateDir {root}/state
CacheDir {root}/cache
RequestRoot {root}/spool
TempDir {root}/tmp
ServerBin {root}/serverbin
ErrorLog {root}/log/error_log
AccessLog {root}/log/access_log
PageLog {root}/log/page_log
# Not the system's /run/cups/printcap.
Printcap {root}/state/printcap
{user}"""

# cupsd drops privileges to lp for its children when it runs as root (our backend excepted).
_AS_ROOT: Final = "User lp\nGroup lp\nSystemGroup root\n"

_BACKEND: Final = '#!/bin/sh\nexec {ipp} "$@"\n'


class CupsUnavailableError(RuntimeError):
    """CUPS cannot run here; the message says what to install or what cupsd said."""


def _find(program: str) -> str:
    found = shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))
    if found is None:
        raise CupsUnavailableError(INSTALL_HINT)
    return found


def _server_bin() -> Path:
    for candidate in map(Path, _SERVER_BINS):
        if (candidate / "backend" / "ipp").is_file():
            return candidate
    raise CupsUnavailableError(f"CUPS's ipp backend is in none of {_SERVER_BINS}: {INSTALL_HINT}")


class CupsServer:
    """cupsd on a free loopback port with queue `queue` printing to `printer`."""

    def __init__(self, *, workdir: Path, queue: str, printer: IppEvePrinter) -> None:
        self.queue = queue
        self.printer = printer
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.uri = f"ipp://{self.host}/printers/{queue}"
        self._root = workdir
        self._conf = workdir / "cupsd.conf"
        self._files_conf = workdir / "cups-files.conf"
        self._error_log = workdir / "log" / "error_log"
        self._output = workdir / "log" / "cupsd.out"
        self._lpadmin, self._lpstat = "lpadmin", "lpstat"  # found on PATH and in sbin by start
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Starts cupsd, waits until it answers, adds the queue and waits until it accepts."""
        self._launch()
        try:
            await self._wait(self._scheduler_answers, "cupsd answered HTTP on its port")
            self._add_queue()
            await self._wait(self._accepting, f"queue {self.queue} accepts jobs")
        except BaseException:
            self.stop()
            raise

    def jobs(self, which: str = "all") -> list[int]:
        """The CUPS job ids of the queue's jobs (`lpstat -W which`: all, completed,
        not-completed)."""
        listed = self._run(self._lpstat, "-h", self.host, "-W", which, "-o", self.queue)
        if listed.returncode != 0:
            raise AssertionError(self._why(f"lpstat -W {which} failed: {listed.stderr}"))
        prefix = f"{self.queue}-"
        return sorted(
            int(line.split()[0].removeprefix(prefix))
            for line in listed.stdout.splitlines()
            if line.startswith(prefix)
        )

    def completed_jobs(self) -> list[int]:
        return self.jobs("completed")

    def stop(self) -> None:
        """SIGTERM (cupsd stops its jobs and saves its state), SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=_STOP_TIMEOUT_S)

    def log_tail(self, chars: int = 3000) -> str:
        logs = [p for p in (self._output, self._error_log) if p.exists()]
        return "\n".join(p.read_text(errors="replace")[-chars:].strip() for p in logs)

    def _launch(self) -> None:
        """Checks the configuration (`cupsd -t`), then runs cupsd in the foreground."""
        cupsd, self._lpadmin, self._lpstat = _find("cupsd"), _find("lpadmin"), _find("lpstat")
        self._write_config()
        command = [cupsd, "-c", str(self._conf), "-s", str(self._files_conf)]
        checked = self._run(command[0], "-t", *command[1:])
        if checked.returncode != 0:
            raise CupsUnavailableError(
                f"cupsd -t refused the configuration: {checked.stdout}{checked.stderr}".strip()
            )
        with self._output.open("ab") as output:
            # A session of its own: teardown signals cupsd and the backends it runs.
            self._process = subprocess.Popen(
                [command[0], "-f", *command[1:]],
                stdout=output,
                stderr=output,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _add_queue(self) -> None:
        added = self._run(
            self._lpadmin,
            *("-h", self.host, "-p", self.queue, "-E"),
            *("-v", self.printer.uri, "-m", "raw"),
        )
        if added.returncode != 0:
            raise CupsUnavailableError(self._why(f"lpadmin -m raw failed: {added.stderr}"))

    def _write_config(self) -> None:
        for sub in ("etc", "state", "cache", "spool", "tmp", "log", "serverbin/backend"):
            (self._root / sub).mkdir(parents=True, exist_ok=True)
        system_bin = _server_bin()
        for entry in system_bin.iterdir():
            link = self._root / "serverbin" / entry.name
            if entry.name != "backend" and not link.exists():
                link.symlink_to(entry)
        backend = self._root / "serverbin" / "backend" / "ipp"
        backend.write_text(_BACKEND.format(ipp=system_bin / "backend" / "ipp"))
        backend.chmod(0o700)
        self._conf.write_text(_CUPSD_CONF.format(port=self.port))
        as_root = _AS_ROOT if os.geteuid() == 0 else ""
        self._files_conf.write_text(_CUPS_FILES_CONF.format(root=self._root, user=as_root))

    def _run(self, *command: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        """The command's result; one that did not end within `timeout` failed (exit -1)."""
        try:
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, -1, "", f"no answer within {timeout:g} s")

    async def _wait(self, check: Callable[[], bool], what: str) -> None:
        """`check` comes true while cupsd runs; else the failure says what cupsd logged."""

        def running_and(check: Callable[[], bool]) -> bool:
            if self._process is None or self._process.poll() is not None:
                raise CupsUnavailableError(self._why(f"cupsd exited before {what}"))
            return check()

        try:
            await wait_until(lambda: running_and(check), what=what, timeout=_START_TIMEOUT_S)
        except AssertionError as exc:
            raise CupsUnavailableError(self._why(str(exc))) from None

    def _scheduler_answers(self) -> bool:
        # An HTTP answer from CUPS itself, not only a connection accepted (all `lpstat -r`
        # checks) nor lpstat's word (`lpstat -d` says "no system default destination" and
        # exits 0 when nothing listens).
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            return (response.getheader("Server") or "").startswith("CUPS/")
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _accepting(self) -> bool:
        answer = self._run(self._lpstat, "-h", self.host, "-a", self.queue)
        return answer.returncode == 0 and "accepting requests" in answer.stdout

    def _why(self, what: str) -> str:
        exited = self._process.poll() if self._process is not None else None
        state = f"cupsd exited {exited}" if exited is not None else "cupsd running"
        return f"{what} ({state} on {self.host}); its log ends:\n{self.log_tail()}"

    async def __aenter__(self) -> CupsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
