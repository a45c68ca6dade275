"""Real `ippeveprinter` processes (CUPS's IPP Everywhere printer) for the IPP printer tests.

Each printer runs a script for every job: it records the environment it is given next to
the spool file (`<spool file>.env`; ippeveprinter passes the job's attributes as IPP_*
variables, e.g. IPP_SIDES, IPP_PAGE_RANGES), reports its impressions if asked
(`report_impressions`), sleeps `print_seconds` (read from a file at
each job, so a test can change it between jobs), goes on printing while the test holds the
printer (`hold`, until `release`), and exits 0. The printer's documents stay in its spool
directory (`-k`).

ippeveprinter needs the system D-Bus even with `-r off` (no DNS-SD): it is started when
nothing answers on its socket. A socket file alone proves nothing: a bus killed without
cleaning up leaves it behind, and ippeveprinter then exits with "Unable to initialize DNS-SD".
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from service.adapters.ipp.attributes import operation_attributes
from service.adapters.ipp.encoding import (
    Attribute,
    Group,
    GroupTag,
    IppDecodeError,
    Message,
    Operation,
    ValueTag,
    decode,
    encode,
)
from tests.waits import wait_until

__all__ = ["INSTALL_HINT", "IppEvePrinter", "IppEveUnavailableError", "RecordedJob"]

INSTALL_HINT: Final = "ippeveprinter not found: apt-get install cups-ipp-utils dbus"
SYSTEM_BUS_SOCKET: Final = Path("/run/dbus/system_bus_socket")
# ippeveprinter is installed in sbin, which is not on every user's PATH.
_SBIN: Final = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_FORMATS: Final = ("application/pdf", "image/pwg-raster", "text/plain")
_START_TIMEOUT_S: Final = 15.0

_SCRIPT: Final = """#!/bin/sh
# ippeveprinter runs this for each job with the spool file as $1 and the job's attributes
# as IPP_* variables. Written whole, then renamed: a test that sees the file can read it.
env -0 > "$1.env.tmp" && mv "$1.env.tmp" "$1.env"
# With the report file, it says each impression done, as ippeveps does: ATTR lines on
# stderr, one per page of the PDF per copy, `report` seconds apart.
if [ -e {report_file} ]; then
  pages=$(grep -c '/Type /Page /' "$1")
  total=$((pages * ${{IPP_COPIES:-1}}))
  n=0
  while [ "$n" -lt "$total" ]; do
    sleep "$(cat {report_file})"
    n=$((n + 1))
    echo "ATTR: job-impressions-completed=$n" >&2
  done
fi
# With the state file, it tells the printer's state reasons as an IPP Everywhere command
# does: a `STATE:` line (e.g. `+media-empty`), which ippeveprinter keeps after the job.
if [ -e {state_file} ]; then
  echo "STATE: $(cat {state_file})" >&2
fi
sleep "$(cat {seconds_file})"
while [ -e {hold_file} ]; do sleep 0.02; done
exit 0
"""


class IppEveUnavailableError(RuntimeError):
    """ippeveprinter cannot run here; the message says what to install or start."""


@dataclass(frozen=True, slots=True)
class RecordedJob:
    """A job the printer's script ran for: its spool file and the environment it was given."""

    document: Path
    env: dict[str, str]

    @property
    def job_id(self) -> int:
        return int(self.document.name.split("-", 1)[0])


def find_ippeveprinter() -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    found = shutil.which("ippeveprinter", path=path)
    if found is None:
        raise IppEveUnavailableError(INSTALL_HINT)
    return found


def system_bus_answers() -> bool:
    """True when something accepts connections on the system D-Bus socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(SYSTEM_BUS_SOCKET))
        except OSError:
            return False
    return True


def ensure_system_bus() -> None:
    """Starts the system D-Bus unless it answers (ippeveprinter exits without it)."""
    if system_bus_answers():
        return
    daemon = shutil.which("dbus-daemon", path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))
    if daemon is None:
        raise IppEveUnavailableError(INSTALL_HINT)
    SYSTEM_BUS_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    # What a bus that is gone left behind: its socket (dbus-daemon will not bind over it)
    # and its pid file (dbus-daemon refuses to start while it exists).
    SYSTEM_BUS_SOCKET.unlink(missing_ok=True)
    (SYSTEM_BUS_SOCKET.parent / "pid").unlink(missing_ok=True)
    started = subprocess.run(
        [daemon, "--system", "--fork"], capture_output=True, text=True, check=False, timeout=15
    )
    deadline = time.monotonic() + 5
    while not system_bus_answers():
        if time.monotonic() > deadline:
            raise IppEveUnavailableError(
                f"the system D-Bus did not start (dbus-daemon --system --fork exited "
                f"{started.returncode}: {started.stderr.strip()})"
            )
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


class IppEvePrinter:
    """One ippeveprinter process on a free port; `restart` keeps the port and the spool."""

    def __init__(
        self,
        *,
        name: str,
        workdir: Path,
        print_seconds: float = 1.0,
        duplex: bool = True,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.uri = f"ipp://127.0.0.1:{self.port}/ipp/print"
        self._workdir = workdir
        self.spool = workdir / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self._seconds_file = workdir / "print-seconds"
        self._script = workdir / "print-command.sh"
        self._hold_file = workdir / "hold"
        self._report_file = workdir / "report-impressions"
        self._state_file = workdir / "state-reasons"
        self._script.write_text(
            _SCRIPT.format(
                seconds_file=shlex.quote(str(self._seconds_file)),
                hold_file=shlex.quote(str(self._hold_file)),
                report_file=shlex.quote(str(self._report_file)),
                state_file=shlex.quote(str(self._state_file)),
            )
        )
        self._script.chmod(0o755)
        self._log = workdir / "ippeveprinter.log"
        self._duplex = duplex
        self._process: subprocess.Popen[bytes] | None = None
        self.print_seconds = print_seconds

    @property
    def print_seconds(self) -> float:
        return float(self._seconds_file.read_text())

    @print_seconds.setter
    def print_seconds(self, seconds: float) -> None:
        """How long the next jobs print for."""
        self._seconds_file.write_text(f"{seconds:g}\n")

    def report_impressions(self, every: float | None) -> None:
        """The next jobs' command reports each impression done (the PDF's pages times the
        copies), `every` seconds apart, as ippeveprinter's own ippeveps would; None: it
        reports nothing (ippeveprinter then says 0 impressions completed)."""
        if every is None:
            self._report_file.unlink(missing_ok=True)
        else:
            self._report_file.write_text(f"{every:g}\n")

    def report_state(self, message: str | None) -> None:
        """The next jobs' command sends `STATE: <message>` (`+media-empty` adds that
        printer-state-reason, `-media-empty` removes it); None: it sends none."""
        if message is None:
            self._state_file.unlink(missing_ok=True)
        else:
            self._state_file.write_text(f"{message}\n")

    def hold(self) -> None:
        """Jobs go on printing (their command runs) until `release`: a job that must still
        be printing when the test acts on it, however slow the machine."""
        self._hold_file.touch()

    def release(self) -> None:
        """The jobs held print to the end (after their `print_seconds`)."""
        self._hold_file.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Starts the printer and returns once it answers Get-Printer-Attributes."""
        executable = find_ippeveprinter()
        ensure_system_bus()
        command = [
            executable,
            *("-p", str(self.port)),
            *("-d", str(self.spool)),
            "-k",
            *("-r", "off"),
            *("-f", ",".join(_FORMATS)),
            *("-c", str(self._script)),
            *(["-2"] if self._duplex else []),
            self.name,
        ]
        with self._log.open("ab") as log:
            # A session of its own: kill() takes the job's running command down with it.
            self._process = subprocess.Popen(
                command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = self._log.read_text(errors="replace")[-2000:]
                raise IppEveUnavailableError(
                    f"ippeveprinter did not answer on port {self.port}: {tail.strip()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL to the printer and the command of the job it is printing: a power cut."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, as a clean shutdown."""
        self._signal(signal.SIGTERM)

    def restart(self) -> None:
        """Kills the printer if it runs, and starts it again on the same port."""
        self.kill()
        self.start()

    def _signal(self, signum: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        # The whole group, even when the printer already exited: its job's command may not have.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def jobs(self) -> list[RecordedJob]:
        """The jobs whose command has started, by job-id."""
        recorded = []
        for env_file in self.spool.glob("*.env"):
            env = {}
            for entry in env_file.read_bytes().split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    env[key] = value
            recorded.append(RecordedJob(document=env_file.with_suffix(""), env=env))
        return sorted(recorded, key=lambda job: job.job_id)

    def documents(self) -> list[Path]:
        """The spooled documents (not the recorded environments nor the command's output)."""
        return sorted(
            path
            for path in self.spool.iterdir()
            if path.suffix not in {".env", ".tmp", ".prn"} and path.is_file()
        )

    async def wait_for_job(self, *, count: int = 1, timeout: float = 10.0) -> RecordedJob:
        """The `count`th job, once its command has started (the printer is printing it)."""

        def nth() -> RecordedJob | None:
            jobs = self.jobs()
            return jobs[count - 1] if len(jobs) >= count else None

        return await wait_until(
            nth, what=f"printer {self.name} started its job number {count}", timeout=timeout
        )

    def _answers(self) -> bool:
        request = Message(
            code=Operation.get_printer_attributes,
            request_id=1,
            groups=(
                Group(
                    GroupTag.operation,
                    (
                        *operation_attributes(printer_uri=self.uri),
                        Attribute.of("requested-attributes", ValueTag.keyword, "printer-state"),
                    ),
                ),
            ),
        )
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request(
                "POST", "/ipp/print", encode(request), {"Content-Type": "application/ipp"}
            )
            response = connection.getresponse()
            return response.status == 200 and decode(response.read()).code == 0
        except (OSError, http.client.HTTPException, IppDecodeError):
            return False
        finally:
            connection.close()

    def __enter__(self) -> IppEvePrinter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
