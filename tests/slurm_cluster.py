"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd started as root in a temporary
folder, with fake GPUs (GRES entries backed by device files, which is all SLURM needs to hand them out and set
CUDA_VISIBLE_DEVICES). Needs Debian's `slurm-wlm` and `munge`; `.ci/run` installs them.

The daemons read the configuration in the temporary folder. Client commands find it where they find a real
cluster's, /etc/slurm/slurm.conf: inside a job the Snakemake SLURM plugin drops SLURM_* variables (SLURM_CONF
too) before it calls srun. So the cluster only starts where that file does not exist, writes it, and removes
it when it stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
# Any files will do as GPUs: SLURM only counts them and names them by index.
FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")
PARTITION = "gpu"
CLIENT_CONFIG = Path("/etc/slurm/slurm.conf")
# The first line of every configuration the test cluster writes: one left behind by a killed test run is
# recognised and replaced, a real cluster's never.
MARKER = "# complora test cluster: this file is removed when the test cluster stops"


class ClusterUnavailable(RuntimeError):
    """The test cluster cannot start on this machine (what is missing is in the message)."""


def unavailable_reason() -> str | None:
    """Why the test cluster cannot start here, or None."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"SLURM is not installed here (no {', '.join(missing)}): apt-get install slurm-wlm munge"
    if CLIENT_CONFIG.exists() and not CLIENT_CONFIG.read_text().startswith(MARKER):
        return f"{CLIENT_CONFIG} exists: this machine belongs to a SLURM cluster, which the test cluster won't replace"
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root"
    return None


@dataclass(frozen=True)
class Cluster:
    root: Path
    conf: Path
    gpus: int
    partition: str

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=60)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (the probes stay bound until all are chosen)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _write_config(root: Path, host: str, gpus: int) -> Path:
    munge_socket = root / "munge" / "munge.socket"
    controller_port, node_port = _free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                MARKER,
                "ClusterName=complora-test",
                f"SlurmctldHost={host}(127.0.0.1)",
                f"SlurmctldPort={controller_port}",
                f"SlurmdPort={node_port}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge_socket}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                # No systemd or cgroups in a container: track processes by parent id, bind nothing.
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                # No slurmdbd: sacct cannot answer, so the profile under test queries squeue, and finished
                # jobs stay visible to it for MinJobAge seconds.
                "AccountingStorageType=accounting_storage/none",
                "MinJobAge=600",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "ReturnToService=2",
                "SchedulerParameters=sched_interval=1",
                "KillWait=10",
                "GresTypes=gpu",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_memory_mb() * 3 // 4}"
                f" Gres=gpu:{gpus} State=UNKNOWN",
                f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    (root / "gres.conf").write_text(
        "".join(f"NodeName={host} Name=gpu File={FAKE_GPU_FILES[i]}\n" for i in range(gpus))
    )
    return conf


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return  # never started, or gone with its pid file
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)  # raises once the process is gone
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def slurm_cluster(root: Path, gpus: int = 2) -> Iterator[Cluster]:
    """Start the cluster in ``root``; on exit cancel every job, stop the daemons by pid and remove the client
    configuration. Raises :class:`ClusterUnavailable` where it cannot start."""
    reason = unavailable_reason()
    if reason:
        raise ClusterUnavailable(reason)
    if gpus > len(FAKE_GPU_FILES):
        raise ValueError(f"at most {len(FAKE_GPU_FILES)} fake GPUs")
    host = socket.gethostname().split(".")[0]
    for folder in ("munge", "state", "spool", "log"):
        (root / folder).mkdir(parents=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = _write_config(root, host, gpus)
    cluster = Cluster(root, conf, gpus, PARTITION)
    munge = root / "munge"
    pid_files = [munge / "munged.pid", root / "slurmctld.pid", root / "slurmd.pid"]
    with contextlib.ExitStack() as cleanup:
        # Undone in reverse order, each step whatever happened to the ones before it.
        CLIENT_CONFIG.parent.mkdir(parents=True, exist_ok=True)
        cleanup.callback(CLIENT_CONFIG.unlink, missing_ok=True)
        CLIENT_CONFIG.write_text(conf.read_text())
        for pid_file in pid_files:
            cleanup.callback(_stop, pid_file)
        cleanup.callback(_cancel_jobs, cluster)
        # munged refuses root unless forced; everything here runs as root, as in CI.
        subprocess.run(
            ["munged", "--force", f"--key-file={key}", f"--socket={munge / 'munge.socket'}",
             f"--pid-file={pid_files[0]}", f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'seed'}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, capture_output=True, timeout=30)
        subprocess.run(["slurmd", "-f", str(conf), "-N", host], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 60
        while cluster.command("sinfo", "-h", "-o", "%T").stdout.strip() != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test cluster's node never became idle; see {root / 'log'}")
            time.sleep(0.5)
        yield cluster


def _cancel_jobs(cluster: Cluster) -> None:
    """Cancel every job and wait (30 s at most) for their processes to end."""
    try:
        cluster.command("scancel", "--full", f"--partition={cluster.partition}")
        deadline = time.monotonic() + 30
        while cluster.command("squeue", "-h", "-t", "RUNNING,COMPLETING").stdout.strip():
            if time.monotonic() > deadline:
                return
            time.sleep(0.5)
    except (OSError, subprocess.SubprocessError):
        return  # the controller is not answering: the daemons are stopped next all the same
