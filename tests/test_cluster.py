"""GPU assignment, conf files, memory limits — and the job on real multi-process clusters.

Unmarked tests are fast (no Spark, or the shared session). ``@pytest.mark.cluster`` tests
start their own Spark applications as subprocesses: a standalone Master plus two Workers
(``spark-class``) whose GPUs are faked through a fake ``nvidia-smi`` behind our real
discovery script, and ``spark-submit`` jobs against it or in local mode. Each one has a
timeout and kills its process groups when it ends. ``@pytest.mark.gpu`` tests need CUDA.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from filterspark.engine import resources as devices
from filterspark.engine.resources import max_model_bytes, parse_size, plan_gpus, task_device

from compare import assert_same_tables, comparable
from clusters import (
    REPO,
    ConnectServer,
    ProcGroup,
    StandaloneCluster,
    executor_pids,
    free_port,
    http_json,
    run_cli,
    spark_env,
    submit_cmd,
    wait_for,
    write_fake_nvidia_smi,
)

CONF = REPO / "conf"
EXTRACT = REPO / "jobs" / "extract.py"
APP_TIMEOUT = 900  # one spark-submit, start to finish (2 shared cores: minutes under load)
TIMINGS: dict[str, float] = {}


def _timing(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 1)
    print(f"CLUSTER-TIMING {name}: {seconds:.1f} s", flush=True)


def read_properties(path: Path) -> dict[str, str]:
    """A Spark properties file as spark-submit reads it (key, whitespace, value)."""
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            props[key] = value.strip()
    return props


# --- which device a task uses ---------------------------------------------------------------------


class _FakeTaskContext:
    def __init__(self, addresses):
        from pyspark.resource import ResourceInformation

        self._res = {"gpu": ResourceInformation("gpu", addresses)} if addresses else {}

    def resources(self):
        return self._res


@pytest.fixture
def assigned(monkeypatch):
    """Pretend Spark gave the current task these GPU addresses."""
    import pyspark

    def _assign(addresses):
        monkeypatch.setattr(pyspark.TaskContext, "get", classmethod(lambda cls: _FakeTaskContext(addresses)))

    return _assign


def _fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_task_uses_exactly_the_assigned_gpu(assigned, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_cuda(monkeypatch, 4)
    assigned(["2"])
    assert task_device() == ("cuda:2", None)
    # isolated containers renumber: address 3 is the first visible device
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assigned(["3"])
    assert task_device() == ("cuda:0", None)


def test_task_without_gpu_never_grabs_one(assigned, monkeypatch):
    _fake_cuda(monkeypatch, 2)
    assigned([])
    assert task_device() == ("cpu", None)


def test_cuda_less_executor_falls_back_with_a_warning(assigned, monkeypatch, caplog):
    _fake_cuda(monkeypatch, 0)
    assigned(["1"])
    with caplog.at_level(logging.WARNING, logger="filterspark.engine.resources"):
        device, note = task_device()
    assert device == "cpu"
    assert "Spark assigned GPU 1" in note and "CUDA is not available" in note
    assert note in caplog.text
    # an address beyond the visible devices is refused the same way
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_cuda(monkeypatch, 1)
    assigned(["5"])
    device, note = task_device()
    assert device == "cpu" and "only 1 CUDA devices" in note


# --- how the extraction stage asks for GPUs ----------------------------------------------------------


GPU_EXECUTORS = {"spark.master": "spark://h:7077", "spark.executor.resource.gpu.amount": "2"}


@pytest.mark.parametrize(
    "conf, requested, mode, gpus",
    [
        ({"spark.master": "local[4]"}, None, "cpu", 0.0),
        ({"spark.master": "local[4]"}, 1.0, "cpu", 0.0),  # would never be scheduled: refused
        ({"spark.master": "spark://h:7077"}, None, "cpu", 0.0),  # executors without GPUs
        ({"spark.master": "yarn"}, 1.0, "cpu", 0.0),
        (GPU_EXECUTORS, None, "stage", 1.0),
        (GPU_EXECUTORS, 0.25, "stage", 0.25),
        (GPU_EXECUTORS, 3.0, "stage", 2.0),  # more than an executor has: clamped, not hung
        (GPU_EXECUTORS, 0.0, "cpu", 0.0),
        ({**GPU_EXECUTORS, "spark.master": "local-cluster[2,1,1024]"}, None, "stage", 1.0),
        ({**GPU_EXECUTORS, "spark.task.resource.gpu.amount": "0.5"}, None, "cluster", 0.5),
        ({**GPU_EXECUTORS, "spark.task.resource.gpu.amount": "1"}, 0.0, "cluster", 1.0),
    ],
)
def test_plan_gpus(conf, requested, mode, gpus):
    plan = plan_gpus(conf, requested)
    assert (plan.mode, plan.gpus_per_task) == (mode, gpus), plan


def test_extraction_profile_is_task_level_gpu_request():
    from filterspark.pipelines.extract import extraction_profile

    assert extraction_profile(0) is None
    profile = extraction_profile(0.5)
    assert profile.taskResources["gpu"].amount == 0.5 and profile.taskResources["cpus"].amount == 1
    assert not profile.executorResources  # task-level: runs on the default executors


# --- memory ---------------------------------------------------------------------------------------


def test_parse_size():
    assert parse_size("1024") == 1024
    assert parse_size("512m") == 512 << 20
    assert parse_size("2g") == 2 << 30
    assert parse_size("1.5GiB") == int(1.5 * (1 << 30))
    with pytest.raises(ValueError):
        parse_size("lots")


def test_max_model_bytes_sources():
    gib = 1 << 30
    # explicit wins, then the conf key; 0 is "no limit"
    assert max_model_bytes({"spark.master": "yarn"}, "3g")[0] == 3 * gib
    assert max_model_bytes({"spark.filterspark.maxModelBytes": "1g"})[0] == gib
    assert max_model_bytes({"spark.master": "yarn"}, "0")[0] is None
    # standalone/local: Spark knows no Python memory limit
    assert max_model_bytes({"spark.master": "spark://h:7077", "spark.executor.memory": "8g"})[0] is None
    # pyspark memory, split over concurrent tasks like PySpark does
    limit, source = max_model_bytes({"spark.executor.pyspark.memory": "8g", "spark.executor.cores": "2"})
    assert limit == int((4 * gib - devices.PYTHON_WORKER_BYTES) / devices.PEAK_FACTOR)
    assert "spark.executor.pyspark.memory" in source and "2 concurrent" in source
    # YARN/K8s: Python lives in the overhead (default max(384m, 10 %))
    assert max_model_bytes({"spark.master": "k8s://https://h", "spark.executor.memory": "2g"})[0] == 0
    limit, _ = max_model_bytes({"spark.master": "yarn", "spark.executor.memoryOverhead": "4g"})
    assert limit == int((4 * gib - devices.PYTHON_WORKER_BYTES) / devices.PEAK_FACTOR)


def _write_catalog(path: Path, rows: list[dict]) -> Path:
    columns = list(rows[0])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def demo_rows(catalog: Path) -> list[dict]:
    """The demo catalog's rows with absolute paths (so a copy elsewhere reads the same files)."""
    with open(catalog, newline="") as handle:
        rows = list(csv.DictReader(handle))
    base = catalog.resolve().parent  # as read_catalog resolves relative paths
    for row in rows:
        row["path"] = str(base / row["path"])
    return rows


def test_model_too_large_for_executor_fails_alone(spark, demo_zoo, tmp_path):
    from filterspark.sources.catalog import read_catalog
    from filterspark.pipelines.extract import ExtractOptions, run_extraction

    rows = demo_rows(demo_zoo)
    sizes = {r["name"]: os.path.getsize(r["path"]) for r in rows}
    chosen = sorted(rows, key=lambda r: sizes[r["name"]])[-3:]  # the three largest files
    big = chosen[-1]["name"]
    limit = sorted(sizes[r["name"]] for r in chosen)[-2]  # only the largest exceeds it
    catalog = _write_catalog(tmp_path / "catalog.csv", chosen)
    warehouse = str(tmp_path / "wh")

    report = run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse, max_model_bytes=limit))
    assert (report.ok, report.failed) == (2, 1)
    models = {r.name: r for r in spark.read.format("delta").load(f"{warehouse}/filterdb.db/models").collect()}
    assert models[big].status == "failed" and models[big].error.startswith("checkpoint too large for the executor")
    assert "--max-model-bytes" in models[big].error and models[big].fingerprint is None
    assert models[big].file_size == sizes[big]
    filters = spark.read.format("delta").load(f"{warehouse}/filterdb.db/filters")
    assert filters.where(f"model_id = {models[big].model_id}").count() == 0
    assert all(models[r["name"]].status == "ok" for r in chosen[:2])

    # with room for it, the next run retries only that model
    report = run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse, max_model_bytes="0"))
    assert (report.extracted, report.skipped, report.ok) == (1, 2, 1)


# --- conf files -------------------------------------------------------------------------------------


def test_discovery_script_lists_gpus(tmp_path):
    script = str(CONF / "getGpusResources.sh")
    fake = write_fake_nvidia_smi(tmp_path / "bin", [0, 1, 3])
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([script], env={**env, "PATH": f"{fake}:{env['PATH']}"}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout) == {"name": "gpu", "addresses": ["0", "1", "3"]}
    out = subprocess.run([script], env={**env, "CUDA_VISIBLE_DEVICES": "2, 5"}, capture_output=True, text=True, timeout=30)
    assert json.loads(out.stdout) == {"name": "gpu", "addresses": ["2", "5"]}
    bare = tmp_path / "bare"  # a PATH with bash but no nvidia-smi (also on GPU machines)
    bare.mkdir()
    (bare / "bash").symlink_to(shutil.which("bash"))
    out = subprocess.run([script], env={**env, "PATH": str(bare)}, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "nvidia-smi" in out.stderr and not out.stdout


def test_conf_files_plan_as_documented():
    gpu = read_properties(CONF / "gpu-cluster.conf")
    assert all(k.startswith("spark.") for k in gpu)
    assert plan_gpus({**gpu, "spark.master": "yarn"}).mode == "stage"
    limit, source = max_model_bytes({**gpu, "spark.master": "yarn"})
    assert 1.5 * (1 << 30) < limit < 2.5 * (1 << 30) and "memoryOverhead" in source
    worker = read_properties(CONF / "gpu-worker.conf")
    assert Path(REPO / worker["spark.worker.resource.gpu.discoveryScript"]).exists()
    local = read_properties(CONF / "local.conf")
    assert plan_gpus(local).mode == "cpu"
    job = json.loads((CONF / "databricks.json").read_text())
    cluster = job["tasks"][0]["new_cluster"]
    assert plan_gpus({"spark.master": "spark://databricks", **cluster["spark_conf"]}).mode == "cluster"
    assert job["tasks"][0]["spark_python_task"]["python_file"] == "jobs/extract.py"


# --- a real GPU (lead's H200 check; skipped without CUDA) ------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpu_extraction_equals_cpu(assigned, tmp_path):
    from torch import nn

    from filterspark.sources.catalog import CatalogEntry
    from filterspark.pipelines.extract_task import extract_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 128, 3, groups=2), nn.Conv2d(128, 256, 3), nn.Conv2d(256, 16, 1))
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    last = str(torch.cuda.device_count() - 1)
    assigned([last])
    device, note = task_device()
    assert device == f"cuda:{last}" and note is None
    entry = CatalogEntry(name="net", path=str(path), format="pytorch")
    on_gpu, on_cpu = extract_model(entry, device=device), extract_model(entry, device="cpu")
    assert on_gpu.summary["status"] == "ok" and on_gpu.summary["device"] == device
    assert on_gpu.loaded.layers[0].weight.device == torch.device(device)
    gpu_rows = [b.to_pydict() for b in on_gpu.filter_batches()]
    assert gpu_rows == [b.to_pydict() for b in on_cpu.filter_batches()]  # the weights exactly
    for g, c in zip(on_gpu.layers, on_cpu.layers):
        for key, value in c.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, rel=1e-7, abs=1e-10), key
            else:
                assert g[key] == value, key


# --- real clusters ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """Master + 2 workers (2 cores each); the workers find GPUs 0,1 and 2,3 through
    conf/getGpusResources.sh and a fake nvidia-smi."""
    root = tmp_path_factory.mktemp("standalone")
    workers = []
    for i, indices in enumerate(([0, 1], [2, 3])):
        fake = write_fake_nvidia_smi(root / f"fake{i}", indices)
        props = {**read_properties(CONF / "gpu-worker.conf"), "spark.worker.resource.gpu.amount": "2"}
        props["spark.worker.resource.gpu.discoveryScript"] = str(REPO / props["spark.worker.resource.gpu.discoveryScript"])
        props_file = root / f"worker{i}.conf"
        props_file.write_text("".join(f"{k} {v}\n" for k, v in props.items()))
        workers.append({"cores": 2, "memory": "1g", "properties_file": props_file,
                        "env": {"PATH": f"{fake}:{os.environ['PATH']}"}})
    cluster = StandaloneCluster(root, workers, root / "spark-conf")
    try:
        cluster.start()
        _timing("standalone master + 2 workers ready", cluster.started_in)
        yield cluster
    finally:
        cluster.stop()


def _submit(procs: ProcGroup, name: str, master: str, app, args, conf, log: Path, env: dict, properties_file=None):
    return procs.start(name, submit_cmd(master, app, args, conf, properties_file), log, env)


def _extract_seconds(text: str) -> float:
    match = re.search(r"wall time: ([0-9.]+) s", text)
    return float(match.group(1)) if match else float("nan")


CLUSTER_APP_CONF = {
    "spark.executor.memory": "640m",
    "spark.executor.memoryOverhead": "384m",
    "spark.scheduler.minRegisteredResourcesRatio": "1.0",
    "spark.scheduler.maxRegisteredResourcesWaitingTime": "300s",
    "spark.ui.enabled": "false",
}


GPU_APP_CONF = {**CLUSTER_APP_CONF, "spark.executor.cores": "2", "spark.executor.resource.gpu.amount": "2",
                "spark.executor.resource.gpu.discoveryScript": str(CONF / "getGpusResources.sh")}


@pytest.mark.cluster
def test_gpu_cluster_tables_equal_local_and_devices_recorded(spark, standalone, demo_warehouse, tmp_path):
    """conf/gpu-cluster.conf on a standalone cluster with fake GPUs: each executor has
    GPUs {0,1} or {2,3}; the extraction stage's tasks ask one each (stage-level)."""
    warehouse = str(tmp_path / "wh")
    conf = GPU_APP_CONF
    procs = ProcGroup()
    try:
        t0 = time.monotonic()
        app = _submit(procs, "extract", standalone.url, EXTRACT,
                      ["--catalog", str(demo_warehouse["catalog"]), "--warehouse", warehouse],
                      conf, tmp_path / "driver.log", spark_env(tmp_path / "conf"), CONF / "gpu-cluster.conf")
        rc = app.wait(APP_TIMEOUT)
        total = time.monotonic() - t0
    finally:
        procs.stop_all()
    out = app.text()
    assert rc == 0, out[-5000:]
    _timing("gpu app total", total)
    _timing("gpu app start-up + teardown (total - extraction)", total - _extract_seconds(out))
    assert "GPU scheduling: stage" in out
    assert_same_tables(spark, demo_warehouse["warehouse"], warehouse)

    _assert_one_gpu_per_task(warehouse, spark)
    executor_logs = "".join(p.read_text(errors="replace") for p in standalone.root.glob("worker*/app-*/*/stderr"))
    assert "but CUDA is not available in this executor; ran on the CPU" in executor_logs


def _assert_one_gpu_per_task(warehouse: str, spark) -> None:
    models = spark.read.format("delta").load(f"{warehouse}/filterdb.db/models").collect()
    assert {m.device for m in models} == {"cpu"}
    notes = [re.match(r"Spark assigned GPU (\d) on \S+ but CUDA is not available", m.device_note or "") for m in models]
    assert all(notes), [m.device_note for m in models]
    # first wave: two tasks per executor at once, each with its own GPU
    assert {n.group(1) for n in notes} == {"0", "1", "2", "3"}


@pytest.mark.cluster
def test_gpu_request_over_connect_builds_the_same_profile(spark, standalone, demo_warehouse, tmp_path):
    """A Spark Connect server running on the GPU standalone cluster: a Connect client's
    extraction asks one GPU per task through the same task-level ResourceProfile as a
    classic driver (``mapInArrow(profile=...)``), and every task gets its own address."""
    warehouse = str(tmp_path / "wh")
    server = ConnectServer(tmp_path / "connect", standalone.url, GPU_APP_CONF, CONF / "gpu-cluster.conf",
                           env=spark_env(tmp_path / "conf"))
    try:
        server.start()
        _timing("Connect server on the standalone cluster ready", server.started_in)
        rc, out = run_cli(["extract", "--catalog", str(demo_warehouse["catalog"]), "--warehouse", warehouse,
                           "--remote", server.url], timeout=APP_TIMEOUT)
    finally:
        server.stop()
    assert rc == 0, out[-5000:]
    assert "GPU scheduling: stage" in out and "1 GPU per extraction task" in out
    assert_same_tables(spark, demo_warehouse["warehouse"], warehouse)
    _assert_one_gpu_per_task(warehouse, spark)


@pytest.mark.cluster
def test_executor_loss_mid_extraction_gives_exact_tables(spark, standalone, demo_warehouse, tmp_path):
    """Kill an executor JVM (SIGKILL) while it runs extraction tasks: Spark re-runs them
    elsewhere and the tables equal the clean run — no duplicate, no missing filter."""
    from filterspark.pipelines.extract import TEST_DELAY_ENV

    from filterspark.sources.catalog import model_id_for

    rows = sorted(demo_rows(Path(demo_warehouse["catalog"])), key=lambda r: r["name"])[:8]
    catalog = _write_catalog(tmp_path / "catalog.csv", rows)
    warehouse = str(tmp_path / "wh")
    ui_port = free_port()
    conf = {**CLUSTER_APP_CONF, "spark.executor.cores": "1", "spark.cores.max": "2",
            "spark.ui.enabled": "true", "spark.ui.port": str(ui_port), "spark.port.maxRetries": "0",
            f"spark.executorEnv.{TEST_DELAY_ENV}": "1.5"}
    procs = ProcGroup()
    killed = {}
    try:
        t0 = time.monotonic()
        app = _submit(procs, "extract", standalone.url, EXTRACT, ["--catalog", str(catalog), "--warehouse", warehouse],
                      conf, tmp_path / "driver.log", spark_env(tmp_path / "conf"))
        api = f"http://127.0.0.1:{ui_port}/api/v1/applications"

        def extraction_running():
            if app.popen.poll() is not None:
                raise RuntimeError(f"app ended early:\n{app.text()[-4000:]}")
            apps = http_json(api) or []
            if not apps:
                return None
            app_id = apps[0]["id"]
            jobs = http_json(f"{api}/{app_id}/jobs?status=running") or []
            job = next((j for j in jobs if "filterspark: extract" in (j.get("description") or "")), None)
            if not job or job.get("numCompletedTasks", 0) < 1:
                return None
            busy = [e["id"] for e in http_json(f"{api}/{app_id}/executors") or []
                    if e["id"] != "driver" and e.get("activeTasks", 0) > 0]
            return (app_id, job, busy) if busy else None

        app_id, job, busy = wait_for(extraction_running, APP_TIMEOUT, "extraction tasks to run", interval=0.3)
        pids = wait_for(lambda: {e: p for e, p in executor_pids(app_id).items() if e in busy}, 60,
                        f"the JVM of executor {busy} of {app_id}")
        victim, pid = next(iter(pids.items()))
        os.kill(pid, signal.SIGKILL)
        killed = {"executor": victim, "pid": pid, "completed_before": job["numCompletedTasks"],
                  "at_s": round(time.monotonic() - t0, 1)}
        print(f"EXECUTOR-LOSS killed {killed}", flush=True)
        rc = app.wait(APP_TIMEOUT)
        total = time.monotonic() - t0
    finally:
        procs.stop_all()
    out = app.text()
    assert rc == 0, out[-5000:]
    assert re.search(rf"Lost executor {killed['executor']}\b", out), out[-5000:]
    assert "ExecutorLostFailure" in out  # its running task failed and was re-run
    assert re.search(rf"{len(rows)} extracted \({len(rows)} ok", out), out[-3000:]
    counts = assert_same_tables(spark, demo_warehouse["warehouse"], warehouse, [model_id_for(r["name"]) for r in rows])
    _timing("executor-loss app total", total)
    print(f"EXECUTOR-LOSS result: tables equal the clean run {counts}", flush=True)


@pytest.mark.cluster
def test_concurrent_writers_and_consistent_reader(spark, demo_warehouse, tmp_path):
    """Two extraction jobs (halves of the demo zoo) start together on one warehouse while
    a third application keeps reading snapshots: both commit everything, the reader
    never sees a committed model with missing or duplicate rows."""
    rows = demo_rows(Path(demo_warehouse["catalog"]))
    ok = comparable(spark, demo_warehouse["warehouse"], "models").where("status = 'ok'").count()
    halves = [_write_catalog(tmp_path / "a.csv", rows[0::2]), _write_catalog(tmp_path / "b.csv", rows[1::2])]
    warehouse = str(tmp_path / "wh")
    env = spark_env(tmp_path / "conf")
    conf = {"spark.ui.enabled": "false"}
    procs = ProcGroup()
    try:
        t0 = time.monotonic()
        writers = [
            _submit(procs, f"writer{i}", "local[1]", EXTRACT, ["--catalog", str(c), "--warehouse", warehouse],
                    conf, tmp_path / f"writer{i}.log", env)
            for i, c in enumerate(halves)
        ]
        reader = _submit(procs, "reader", "local[1]", REPO / "tests" / "cluster_apps" / "snapshot_reader.py",
                         [warehouse, str(ok), str(APP_TIMEOUT - 60)], conf, tmp_path / "reader.log", env)
        codes = [w.wait(APP_TIMEOUT) for w in writers]
        reader_rc = reader.wait(APP_TIMEOUT)
        total = time.monotonic() - t0
    finally:
        procs.stop_all()
    for w, rc in zip(writers, codes):
        assert rc == 0, w.text()[-5000:]
        assert re.search(rf"{len(rows) // 2} extracted \({len(rows) // 2} ok", w.text()), w.text()[-3000:]
    assert reader_rc == 0, reader.text()[-5000:]
    line = next(l for l in reader.text().splitlines() if l.startswith("SNAPSHOT_READER "))
    seen = json.loads(line.split(" ", 1)[1])
    print(f"CONCURRENCY reader rounds={seen['rounds']} model counts seen={seen['model_counts']}", flush=True)
    retries = sum(w.text().count("concurrent Delta write") for w in writers)
    print(f"CONCURRENCY Delta conflict retries logged by the writers: {retries}", flush=True)
    assert seen["violations"] == [], seen["violations"]
    assert seen["rounds"] >= 1 and seen["model_counts"][-1] == ok
    assert_same_tables(spark, demo_warehouse["warehouse"], warehouse)
    _timing("concurrent writers + reader total", total)
