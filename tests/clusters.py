"""Start real multi-process Spark applications from tests: spark-submit, a standalone cluster.

Everything runs as subprocesses in their own process groups (the test run's own
SparkSession is never touched), with a timeout on every wait, and is killed — the whole
group — when the test ends, whatever happened. Logs go to files the tests can read.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def spark_bin(name: str) -> str:
    """``spark-submit``/``spark-class`` of the installed pyspark (the venv's bin/)."""
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_env(conf_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a Spark subprocess: loopback only, this interpreter on both sides,
    and an empty ``SPARK_CONF_DIR`` so no spark-defaults.conf of the machine leaks in."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_LOCAL_HOSTNAME="localhost",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_CONF_DIR=str(conf_dir),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    env.update(extra)
    return env


@dataclass
class Proc:
    """A subprocess in its own process group, output in ``log``."""

    name: str
    popen: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        """Exit code; on timeout the group is killed and TimeoutError raised."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            tail = self.text()[-3000:]
            raise TimeoutError(f"{self.name} still running after {timeout:.0f} s; log tail:\n{tail}") from None

    def stop(self) -> None:
        """SIGTERM the whole group, SIGKILL what is left after a few seconds."""
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=8)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.popen.pid, signal.SIGKILL)  # children that outlived their leader
        if self.popen.poll() is None:
            self.popen.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start(name: str, cmd: list[str], log: Path, env: dict[str, str], cwd: Path = REPO) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "wb")
    popen = subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True
    )
    handle.close()
    return Proc(name, popen, log)


class ProcGroup:
    """Every process a test starts; ``stop_all`` in ``finally``/fixture teardown."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, *args, **kwargs) -> Proc:
        proc = start(*args, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


#: Settings of every Spark application the tests start.
SUBMIT_DEFAULTS = {
    "spark.ui.showConsoleProgress": "false",
    "spark.pyspark.python": sys.executable,
    "spark.pyspark.driver.python": sys.executable,
    "spark.sql.shuffle.partitions": "2",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.driver.memory": "768m",
}


def submit_cmd(master: str, app: str | Path, app_args: list[str], conf: dict[str, str], properties_file: Path | None = None) -> list[str]:
    """A ``spark-submit`` command line with Delta's JARs and the given settings."""
    from filterspark.engine.delta_jars import delta_submit_args

    cmd = [spark_bin("spark-submit"), "--master", master, *delta_submit_args()]
    if properties_file:
        cmd += ["--properties-file", str(properties_file)]
    for key, value in {**SUBMIT_DEFAULTS, **conf}.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + [str(app), *app_args]


def http_json(url: str, timeout: float = 5.0):
    """GET a JSON document, or None when the server is not (yet) answering."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read().decode())
    except (OSError, ValueError):
        return None


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def write_fake_nvidia_smi(directory: Path, indices: list[int]) -> Path:
    """A fake ``nvidia-smi`` answering ``--query-gpu=index`` with ``indices``, for the real
    discovery script ``conf/getGpusResources.sh`` on a machine without GPUs."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    lines = "\\n".join(str(i) for i in indices)
    script.write_text(f'#!/bin/sh\nprintf "{lines}\\n"\n')
    script.chmod(0o755)
    return directory


class StandaloneCluster:
    """A standalone Master and workers on 127.0.0.1, started through ``spark-class``.

    ``workers``: one dict of extra environment per worker (e.g. a PATH with a fake
    nvidia-smi), with the worker's cores/memory/properties file.
    """

    def __init__(self, root: Path, workers: list[dict], conf_dir: Path) -> None:
        self.root = root
        self.worker_specs = workers
        self.conf_dir = conf_dir
        self.port = free_port()
        self.ui_port = free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.procs = ProcGroup()
        self.started_in = 0.0

    def start(self, timeout: float = 240) -> "StandaloneCluster":
        t0 = time.monotonic()
        env = spark_env(self.conf_dir, SPARK_DAEMON_MEMORY="384m")
        master = [spark_bin("spark-class"), "org.apache.spark.deploy.master.Master",
                  "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port)]
        self.procs.start("master", master, self.root / "master.log", env)
        for i, spec in enumerate(self.worker_specs):
            work = self.root / f"worker{i}"
            work.mkdir(parents=True, exist_ok=True)
            cmd = [spark_bin("spark-class"), "org.apache.spark.deploy.worker.Worker", self.url,
                   "--host", "127.0.0.1", "--webui-port", str(free_port()), "--work-dir", str(work),
                   "--cores", str(spec.get("cores", 1)), "--memory", spec.get("memory", "1g")]
            if spec.get("properties_file"):
                cmd += ["--properties-file", str(spec["properties_file"])]
            wenv = spark_env(self.conf_dir, SPARK_DAEMON_MEMORY="384m", **spec.get("env", {}))
            self.procs.start(f"worker{i}", cmd, self.root / f"worker{i}.log", wenv)
        wait_for(lambda: self.alive_workers() >= len(self.worker_specs), timeout, "standalone workers to register")
        self.started_in = time.monotonic() - t0
        return self

    def state(self) -> dict | None:
        return http_json(f"http://127.0.0.1:{self._bound_ui_port()}/json/")

    def _bound_ui_port(self) -> int:
        """The port the master's web UI really bound: Spark moves to the next port when the
        chosen one was taken meanwhile (a free port is only free until someone binds it)."""
        log = self.procs.procs[0].text() if self.procs.procs else ""
        match = re.search(r"Bound MasterWebUI to \S+, and started at http://\S+?:(\d+)", log)
        return int(match.group(1)) if match else self.ui_port

    def alive_workers(self) -> int:
        state = self.state() or {}
        self._raise_if_dead()
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def _raise_if_dead(self) -> None:
        for proc in self.procs.procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.text()[-3000:]}")

    def stop(self) -> None:
        self.procs.stop_all()


def executor_pids(app_id: str) -> dict[str, int]:
    """Executor id -> PID of the executor JVMs of one application (from /proc)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args]
        if "org.apache.spark.executor.CoarseGrainedExecutorBackend" in words and app_id in words:
            pids[words[words.index("--executor-id") + 1]] = int(entry.name)
    return pids


class ConnectServer:
    """A Spark Connect server (pip's pyspark ships it) on 127.0.0.1, started through
    spark-submit with Delta's package, as its own Spark application on ``master``."""

    def __init__(self, root: Path, master: str = "local[2]", conf: dict[str, str] | None = None,
                 properties_file: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.master = master
        self.conf = dict(conf or {})
        self.properties_file = properties_file
        self.env = env
        self.port = free_port()
        self.url = f"sc://127.0.0.1:{self.port}"
        self.procs = ProcGroup()
        self.proc: Proc | None = None
        self.started_in = 0.0

    def start(self, timeout: float = 300) -> "ConnectServer":
        from filterspark.engine.session import connect_server_command

        t0 = time.monotonic()
        conf = {**SUBMIT_DEFAULTS, "spark.driver.memory": "1g", **self.conf}
        cmd = connect_server_command(self.port, "127.0.0.1", self.master, conf, self.properties_file)
        env = self.env or spark_env(self.root / "spark-conf")
        self.proc = self.procs.start("connect-server", cmd, self.root / "connect-server.log", env)
        wait_for(self._listening, timeout, f"the Spark Connect server on port {self.port}")
        self.started_in = time.monotonic() - t0
        return self

    def _listening(self) -> bool:
        if self.proc.popen.poll() is not None:
            raise RuntimeError(f"the Connect server exited with {self.proc.popen.returncode}:\n{self.proc.text()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(1.0)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self.procs.stop_all()


def run_cli(args: list[str], timeout: float = 600, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``filterspark ARGS`` as its own process (output and errors together), as a user runs it."""
    run_env = dict(env or os.environ)
    run_env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    run_env["PYTHONUNBUFFERED"] = "1"
    done = subprocess.run([sys.executable, "-m", "filterspark.cli", *args], cwd=REPO, env=run_env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, text=True)
    return done.returncode, done.stdout


class ServeProcess:
    """``filterspark serve`` as its own foreground process (as a user runs it) on free
    ports of 127.0.0.1, ready once it prints its ready line; ``stop`` sends SIGTERM to it
    alone (its clean shutdown), then kills what is left of its process group."""

    def __init__(self, root: Path, warehouse: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.warehouse = warehouse
        self.args = list(args)
        self.env = env
        self.port, self.jdbc_port = free_port(), free_port()
        self.url = f"sc://127.0.0.1:{self.port}"
        self.jdbc_url = f"jdbc:hive2://127.0.0.1:{self.jdbc_port}/filterdb"
        self.procs = ProcGroup()
        self.proc: Proc | None = None
        self.started_in = 0.0

    def start(self, timeout: float = 300) -> "ServeProcess":
        t0 = time.monotonic()
        conf = {**SUBMIT_DEFAULTS, "spark.driver.memory": "1g"}
        cmd = [sys.executable, "-m", "filterspark.cli", "serve", "--warehouse", str(self.warehouse),
               "--port", str(self.port), "--jdbc-port", str(self.jdbc_port), "--master", "local[2]",
               *(f"--conf={k}={v}" for k, v in conf.items()), *self.args]
        env = self.env or spark_env(self.root / "spark-conf")
        self.proc = self.procs.start("serve", cmd, self.root / f"serve-{self.port}.log", env)
        wait_for(self._ready, timeout, f"filterspark serve on port {self.port}")
        self.started_in = time.monotonic() - t0
        return self

    def _ready(self) -> bool:
        if self.proc.popen.poll() is not None:
            raise RuntimeError(f"filterspark serve exited with {self.proc.popen.returncode}:\n{self.proc.text()[-3000:]}")
        return "filterspark serve: ready" in self.proc.text()

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM to the server process itself; its exit code."""
        self.proc.popen.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.popen.poll() is None:
            try:
                self.terminate()
            except TimeoutError:
                pass
        self.procs.stop_all()


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += parents.get(current, [])
    return tree


def listening_sockets(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds, read
    from /proc/net/tcp{,6} and the processes' file descriptors."""
    import ipaddress

    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(packed)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found.add((str(ip), int(port, 16)))
    return found


def beeline(jdbc_url: str, *statements: str, timeout: float = 180) -> tuple[int, str]:
    """pip's pyspark ``bin/beeline`` running ``statements`` against ``jdbc_url``: exit code
    and output (results as CSV with a header line per statement)."""
    env = spark_env(Path(os.environ.get("TMPDIR", "/tmp")) / "beeline-conf")
    done = subprocess.run([spark_bin("beeline"), "-u", jdbc_url, "--silent=true", "--outputformat=csv2", "--nullemptystring=true",
                           "-e", "; ".join(statements)], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, text=True)
    return done.returncode, done.stdout
