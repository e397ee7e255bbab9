"""A real single-node SLURM cluster on localhost for the sweep tests: munged, slurmctld and slurmd from
Debian's packages, every file under one temp folder, ports chosen free, torn down after the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")


def missing() -> list[str]:
    return [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> Cluster:
        root, host = self.root, socket.gethostname()
        for sub in ("state", "spool"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = root / "munge.socket"
        subprocess.run([shutil.which("munged") or "/usr/sbin/munged", "--force", "--key-file", str(key),
                        "--socket", str(sock), "--pid-file", str(root / "munged.pid"),
                        "--log-file", str(root / "munged.log"), "--seed-file", str(root / "munge.seed")],
                       check=True, capture_output=True)
        memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        self.conf.write_text("\n".join([
            "ClusterName=golftest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            "AuthType=auth/munge", f"AuthInfo=socket={sock}", "CredType=cred/munge",
            f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill", "MpiDefault=none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "ReturnToService=2",
            "JobRequeue=1", "KillWait=10", "MinJobAge=600",
            f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        for daemon, args in (("slurmctld", ["-D", "-c"]), ("slurmd", ["-D"])):
            path = shutil.which(daemon) or f"/usr/sbin/{daemon}"
            out = open(root / f"{daemon}.out", "w")
            self.processes.append(subprocess.Popen([path, *args, "-f", str(self.conf)], env=self.env,
                                                   stdout=out, stderr=subprocess.STDOUT))
            time.sleep(1)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
            if state.stdout.strip().startswith("idle"):
                return self
            time.sleep(1)
        raise RuntimeError(f"SLURM node never became idle; see {root}/slurmctld.log and slurmd.log")

    def squeue(self) -> list[tuple[str, str]]:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True)
        return [tuple(line.split()) for line in out.stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True)
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        pid_file = self.root / "munged.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
