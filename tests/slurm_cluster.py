"""A one-node Slurm for the tests: Debian's slurm-wlm and munge (`.ci/run` installs them), started on 127.0.0.1.

Everything lives in one temp folder: its slurm.conf (clients find it through SLURM_CONF), a munge key and a munged
of its own on its own socket (so no system daemon is needed or touched), the controller's state, the spool and
every daemon's log. `CommunicationParameters=NoInAddrAny,NoCtldInAddrAny` makes the daemons listen on the address
the host name resolves to; where that is not a loopback address they run in a UTS namespace named `localhost`,
and `start` checks that nothing listens elsewhere. The daemons run in the foreground in sessions of their own and
are stopped by process group (slurmstepd included) in `stop`, whatever happened before.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NODE = "dhgen1"
MUNGED, SLURMCTLD, SLURMD = "/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd"
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "munge", "unmunge")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
INSTALL = "bash .ci/run installs them (apt-get install slurm-wlm munge)"
AS_LOCALHOST = ["unshare", "--uts", "sh", "-c", 'hostname localhost && exec "$0" "$@"']

CONF = """\
ClusterName=dhgentest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def unavailable() -> str | None:
    """Why no Slurm can be started here, or None. Not root: slurmd runs each job as its user, which takes root."""
    if os.geteuid() != 0:
        return "a real Slurm needs root (slurmd runs jobs as their user); CI runs as root"
    missing = [p for p in (MUNGED, SLURMCTLD, SLURMD) if not os.access(p, os.X_OK)]
    missing += [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        return f"Slurm is not installed here (no {', '.join(missing)}); {INSTALL}"
    if not _hostname_is_loopback() and subprocess.run([*AS_LOCALHOST, "true"], capture_output=True).returncode:
        return f"the host name {socket.gethostname()} is not 127.0.0.1 and no UTS namespace can be made to rename it"
    return None


class SlurmCluster:
    def __init__(self) -> None:
        # munged wants every folder above its socket open to all: a folder of /tmp, not pytest's private one.
        self.root = Path(tempfile.mkdtemp(prefix="dhgen-slurm-"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.ports: set[int] = set()  # the daemons', chosen free at start
        self._daemons: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """This process's environment as it is now (a job gets its submitter's), with SLURM_CONF naming this Slurm."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # --- starting and stopping ----------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """munged, slurmctld, slurmd; returns once the node is idle. RuntimeError (with the daemons' logs) if not."""
        deadline = time.monotonic() + timeout
        self._write_conf()
        self._spawn("munged", MUNGED, "-F", *self._munge_paths())
        self._wait(self._munge_answers, deadline, "munged to answer on its socket")
        self._spawn("slurmctld", SLURMCTLD, "-D")
        self._spawn("slurmd", SLURMD, "-D", "-N", NODE)
        self._wait(lambda: self.run("sinfo", "-h", "-N", "-o", "%t", check=False).strip() == "idle", deadline, "idle")
        self._check_loopback_only()

    def stop(self) -> None:
        """Cancel every job (20 s at most), then stop the daemons by process group whatever happened: SIGTERM, then
        SIGKILL to what is left 10 s later; the temp folder goes too."""
        try:
            if "slurmctld" in self._daemons:
                self._cancel_jobs(deadline=time.monotonic() + 20)
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                process = self._daemons.pop(name, None)
                if process is not None:
                    _stop_group(process)
            shutil.rmtree(self.root, ignore_errors=True)

    def _cancel_jobs(self, deadline: float) -> None:
        self.run("scancel", "--user=root", check=False)
        while self.run("squeue", "-h", check=False).strip() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _write_conf(self) -> None:
        for folder in ("state", "spool"):
            (self.root / folder).mkdir()
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        ctld_port, slurmd_port = _free_port(), _free_port()
        memory_mb = min(16384, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
        self.conf.write_text(
            CONF.format(
                root=self.root,
                node=NODE,
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
                cpus=os.cpu_count() or 1,
                memory_mb=memory_mb,
            )
        )
        self.ports = {ctld_port, slurmd_port}

    def _munge_paths(self) -> list[str]:
        root = self.root
        return [
            f"--socket={root}/munge.socket",
            f"--key-file={root}/munge.key",
            f"--log-file={root}/munged.log",
            f"--pid-file={root}/munged.pid",
            f"--seed-file={root}/munged.seed",
        ]

    def _spawn(self, name: str, *command: str) -> None:
        prefix = [] if _hostname_is_loopback() else AS_LOCALHOST
        with open(self.root / f"{name}.out", "wb") as out:
            self._daemons[name] = subprocess.Popen(
                [*prefix, *command], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _munge_answers(self) -> bool:
        socket_path = f"--socket={self.root}/munge.socket"
        credential = subprocess.run(["munge", "-n", socket_path], capture_output=True, timeout=10)
        if credential.returncode:
            return False
        decoded = subprocess.run(["unmunge", socket_path], input=credential.stdout, capture_output=True, timeout=10)
        return decoded.returncode == 0

    def _wait(self, ready, deadline: float, what: str) -> None:
        while not ready():
            dead = [name for name, p in self._daemons.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Slurm did not start ({', '.join(dead) or 'timed out'} waiting for {what}):\n" + self.logs()
                )
            time.sleep(0.2)

    def _check_loopback_only(self) -> None:
        listening = _listening(self.ports)
        elsewhere = {f"{address}:{port}" for address, port in listening if not address.is_loopback}
        if elsewhere or not listening:
            raise RuntimeError(f"the Slurm daemons listen on {elsewhere or 'nothing found'}, not 127.0.0.1 only")

    def logs(self) -> str:
        """The tail of every daemon's log, for a failure message."""
        tails = []
        for path in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log")):
            tails.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(tails)

    # --- using it -----------------------------------------------------------------------------------------------

    def run(self, *command: str, check: bool = True) -> str:
        """A Slurm client command's stdout (CalledProcessError, with its stderr, when `check` and it fails)."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=30)
        if check and done.returncode:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
        return done.stdout

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job` of a job (an array: one dict per task), as fields; [] for a job it no longer knows."""
        text = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return [dict(re.findall(r"(\w[\w/:]*)=(\S*)", line)) for line in text.splitlines() if line.strip()]

    def wait_ended(self, *job_ids: str, timeout: float = 90) -> list[dict[str, str]]:
        """Every task of the jobs once all have ended; TimeoutError naming the states and reasons otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            tasks = [task for job_id in job_ids for task in self.jobs(job_id)]
            if tasks and all(task["JobState"] in ENDED for task in tasks):
                return tasks
            if time.monotonic() > deadline:
                states = [f"{t['JobId']} {t['JobState']} ({t.get('Reason')})" for t in tasks]
                raise TimeoutError(f"jobs {', '.join(job_ids)} still not ended: {'; '.join(states)}\n{self.logs()}")
            time.sleep(0.3)


def _hostname_is_loopback() -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(socket.gethostname())).is_loopback
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(ports: set[int]) -> set[tuple[ipaddress.IPv4Address, int]]:
    """The (address, port) pairs among `ports` that something listens on, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and int(port, 16) in ports:  # 0A: LISTEN
            found.add((ipaddress.IPv4Address(bytes.fromhex(address)[::-1]), int(port, 16)))
    return found


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the daemon's process group, 10 s for the daemon to end, then SIGKILL to whatever is left of it."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
