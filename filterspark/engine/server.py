"""``filterspark serve``: one long-running Spark application that serves a warehouse's
tables to SQL clients over Spark Connect (``pyspark --remote``, ``filterspark ... --remote``,
notebooks) and a HiveServer2-compatible JDBC/ODBC endpoint (``beeline``, BI tools).

* This Python process is the driver: a classic session built by
  :func:`~filterspark.engine.session.configure_builder` (Delta, any master), in which
  Spark's ``SparkConnectPlugin`` starts the Connect service and
  ``HiveThriftServer2.startWithContext`` the JDBC one. One application, one catalog: the
  tables and ``<table>_latest`` views :func:`~filterspark.delta.registry.register_tables`
  names in the driver's session are the names of every client session.
* Safe by default: everything binds 127.0.0.1. Another ``host`` needs a token, Spark
  Connect's pre-shared bearer token (handed to the JVM in its environment, never in the
  Spark conf or the output). The JDBC endpoint has no such authentication, so it stays
  on 127.0.0.1 whatever the host.
* Fresh data: Delta reads a table's latest snapshot at every query; tables that appear
  (or are created anew) are named within ``refresh_seconds``.
* Thrift sessions load Delta's catalog class through Hive's session class loader, which
  sees only the JVM's own class path (not ``spark.jars.packages``), so with the JDBC
  endpoint on, Delta's JARs go on the driver's class path.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Mapping, TextIO

from filterspark.delta import jvm
from filterspark.delta.files import local_path
from filterspark.delta.registry import SERVED_DATABASE_CONF, SERVED_WAREHOUSE_CONF, register_tables, table_dirs
from filterspark.delta.schemas import VIEWS
from filterspark.delta.warehouse import DEFAULT_DATABASE, DEFAULT_WAREHOUSE, Warehouse, warehouse_uri
from filterspark.engine.delta_jars import delta_driver_classpath
from filterspark.engine.session import LONG_LIVED_JVM_OPTIONS, build_session
from filterspark.errors import ServeError

#: Environment variable holding the token when ``--token`` is not given.
TOKEN_ENV = "FILTERSPARK_TOKEN"
#: Where Spark Connect reads its pre-shared token when ``spark.connect.authenticate.token`` is unset.
CONNECT_TOKEN_ENV = "SPARK_CONNECT_AUTHENTICATE_TOKEN"
CONNECT_PLUGIN = "org.apache.spark.sql.connect.SparkConnectPlugin"
LOOPBACK = "127.0.0.1"

#: The FAIR scheduler's default pool shares the executors between concurrent queries
#: (Spark's own default pool is FIFO: one long query would hold every core).
_FAIR_POOLS = """<?xml version="1.0"?>
<allocations>
  <pool name="default"><schedulingMode>FAIR</schedulingMode><weight>1</weight><minShare>0</minShare></pool>
</allocations>
"""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) means this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


@dataclass(frozen=True)
class ServeOptions:
    """What ``filterspark serve`` serves and where. ``jdbc_port=0`` turns the JDBC endpoint
    off; ``refresh_seconds=0`` turns the re-registration of new tables off. ``token`` is
    required for a ``host`` off loopback and never shown (``repr`` leaves it out)."""

    warehouse: str = DEFAULT_WAREHOUSE
    database: str = DEFAULT_DATABASE
    host: str = LOOPBACK
    port: int = 15002
    jdbc_port: int = 10000
    token: str | None = field(default=None, repr=False)
    master: str | None = None
    conf: Mapping[str, str] = field(default_factory=dict)
    refresh_seconds: float = 2.0

    def __post_init__(self) -> None:
        Warehouse(self.warehouse, self.database)  # validates the names
        if not 0 < self.port < 65536:
            raise ServeError(f"port must be 1-65535, not {self.port}")
        if not 0 <= self.jdbc_port < 65536 or self.jdbc_port == self.port:
            raise ServeError(f"jdbc_port must be 0 (off) or a port other than port={self.port}, not {self.jdbc_port}")
        if self.refresh_seconds < 0:
            raise ServeError(f"refresh_seconds must be >= 0, not {self.refresh_seconds}")
        if self.token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{16,}", self.token):
            raise ServeError(
                "token must be at least 16 letters, digits or - _ . ~ (it travels in a Spark Connect URL), "
                "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if not self.token and not is_loopback(self.host):
            raise ServeError(
                f"host={self.host!r} is not a loopback address: serving beyond this machine needs a token "
                f"(token=..., or the {TOKEN_ENV} environment variable); refusing to start without one"
            )


def connection_lines(options: ServeOptions) -> list[str]:
    """How clients connect (the start-up message); the token is named, never shown."""
    token = f"${TOKEN_ENV}"
    if not options.token:
        url = f"sc://{options.host}:{options.port}"
        lines = [f"  Spark Connect  {url}", f'    pyspark --remote "{url}"']
    else:
        local = (f"sc://localhost:{options.port}/;token={token}" if options.host in ("0.0.0.0", "::")
                 or is_loopback(options.host) else f"sc://{options.host}:{options.port}/;authorization=Bearer%20{token}")
        public = options.host if options.host not in ("0.0.0.0", "::") else socket.gethostname()
        url = local
        lines = [f"  Spark Connect  (token required; clients read it from ${TOKEN_ENV})",
                 f'    on this machine:  pyspark --remote "{local}"']
        if not is_loopback(options.host):
            lines += [f'    other machines:   pyspark --remote "sc://{public}:{options.port}/;authorization=Bearer%20{token}"',
                      "                      (plain gRPC: the token and results travel unencrypted; behind a TLS "
                      f'proxy use "sc://{public}:PORT/;token={token}")']
    lines.append(f'    filterspark sql --remote "{url}" "SELECT name, status FROM {options.database}.models"')
    if options.jdbc_port:
        jdbc = f"jdbc:hive2://{LOOPBACK}:{options.jdbc_port}/{options.database}"
        lines += [f"  JDBC/ODBC (HiveServer2)  {jdbc}  (BI tools: Apache Hive or Spark driver, no authentication)",
                  f'    beeline -u "{jdbc}" -e "SELECT count(*) FROM {options.database}.models"']
        if not is_loopback(options.host):
            lines.append(f"    on {LOOPBACK} only (it has no token authentication); from another machine: "
                         f"ssh -L {options.jdbc_port}:{LOOPBACK}:{options.jdbc_port} {socket.gethostname()}")
    return lines


def server_conf(options: ServeOptions, scratch_dir: str) -> dict[str, str]:
    """The Spark settings of the serving application (``options.conf`` wins, except that
    its plugins are kept beside the Connect one)."""
    pools = os.path.join(scratch_dir, "fairscheduler.xml")
    with open(pools, "w") as handle:
        handle.write(_FAIR_POOLS)
    hive_dirs = {name: os.path.join(scratch_dir, name) for name in ("operation_logs", "hive", "resources")}
    for path in hive_dirs.values():
        os.makedirs(path, exist_ok=True)
    conf = {
        "spark.sql.warehouse.dir": warehouse_uri(options.warehouse),  # not ./spark-warehouse
        "spark.connect.grpc.binding.address": options.host,
        "spark.connect.grpc.binding.port": str(options.port),
        # A killed client's query is interrupted after a minute instead of Spark's five.
        "spark.connect.execute.manager.detachedTimeout": "60s",
        SERVED_WAREHOUSE_CONF: warehouse_uri(options.warehouse),
        SERVED_DATABASE_CONF: options.database,
        "spark.ui.enabled": "false",
        "spark.scheduler.mode": "FAIR",
        "spark.scheduler.allocation.file": pools,
        # A server lives long enough for the full JIT (local drivers default to C1 only).
        "spark.driver.defaultJavaOptions": LONG_LIVED_JVM_OPTIONS,
    }
    if options.jdbc_port:
        hive = "spark.hadoop.hive."
        conf.update({
            f"{hive}server2.thrift.bind.host": LOOPBACK,
            f"{hive}server2.thrift.port": str(options.jdbc_port),
            f"{hive}server2.transport.mode": "binary",
            f"{hive}server2.logging.operation.log.location": hive_dirs["operation_logs"],
            f"{hive}exec.local.scratchdir": hive_dirs["hive"],
            f"{hive}downloaded.resources.dir": hive_dirs["resources"],
            **delta_driver_classpath(),
        })
    conf.update(options.conf)
    conf["spark.plugins"] = ",".join(p for p in (options.conf.get("spark.plugins"), CONNECT_PLUGIN) if p)
    return conf


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port that is taken before Spark starts (a taken JDBC port would end the JVM)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ServeError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def _wait_listening(port: int, timeout: float = 120.0) -> None:
    """Wait until the JDBC endpoint accepts connections (it binds in a thread of its own)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(1.0)
            if probe.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.2)
    raise ServeError(f"the JDBC endpoint did not listen on {LOOPBACK}:{port} within {timeout:.0f} s")


def warehouse_state(spark, wh: Warehouse) -> frozenset:
    """What the names depend on: the database's Delta tables and, on local file systems,
    the identity of each ``_delta_log`` directory (a table deleted and written anew)."""
    db_location = f"{wh.uri}/{wh.database}.db"
    root = local_path(db_location)
    if root is None:
        return frozenset(jvm.list_table_dirs(spark, db_location) if jvm.unavailable_reason(spark) is None else ())
    state = set()
    for name in table_dirs(root):
        try:
            state.add((name, os.stat(os.path.join(root, name, "_delta_log")).st_ino))
        except FileNotFoundError:  # deleted meanwhile
            pass
    return frozenset(state)


def _warm_up(spark, wh: Warehouse, names: list[str]) -> None:
    """One small read of a table and of a ``_latest`` view: the first Delta query of a JVM
    takes seconds (class loading, code generation), better before "ready" than in a client's."""
    views = [v for v, (_, needs) in VIEWS.items() if all(t in names for t in needs)]
    for name in [n for n in ("models",) if n in names] + views[:1]:
        spark.sql(f"SELECT * FROM {wh.name(name)} LIMIT 1").collect()


def _names_line(names: list[str]) -> str:
    views = [v for v, (_, needs) in VIEWS.items() if all(t in names for t in needs)]
    return f"{len(names)} tables, {len(views)} views"


def serve(options: ServeOptions, out: TextIO = sys.stdout) -> int:
    """Run the server in the foreground until SIGINT or SIGTERM; 0 after a clean shutdown,
    1 when the Spark application stopped by itself."""
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    wh = Warehouse(options.warehouse, options.database)
    if options.token:
        os.environ[CONNECT_TOKEN_ENV] = options.token
    else:  # "no token" must mean no authentication, not a value left in the environment
        os.environ.pop(CONNECT_TOKEN_ENV, None)
    _check_port_free(options.host, options.port)
    if options.jdbc_port:
        _check_port_free(LOOPBACK, options.jdbc_port)
    scratch = tempfile.mkdtemp(prefix="filterspark-serve-")
    spark = thrift = None
    stop = threading.Event()
    previous: dict[int, object] = {}
    try:
        try:
            spark = build_session(app_name="filterspark-serve", master=options.master, conf=server_conf(options, scratch))
            if options.jdbc_port:
                thrift = jvm.start_thrift_server(spark, scratch)
                _wait_listening(options.jdbc_port)
        except jvm.spark_errors() as err:
            raise ServeError(f"the Spark application did not start: {str(err).splitlines()[0]}") from err
        names = register_tables(spark, wh)
        _warm_up(spark, wh, names)
        state = warehouse_state(spark, wh)
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        say(f"filterspark serve: {wh.describe()}: {_names_line(names)}; master {spark.sparkContext.master}")
        for line in connection_lines(options):
            say(line)
        refresh = f"new tables are named within {options.refresh_seconds:g} s" if options.refresh_seconds else \
            "new tables are not picked up (refresh off)"
        say(f"filterspark serve: ready ({refresh}; Ctrl-C or SIGTERM stops it)")
        while not stop.wait(options.refresh_seconds or 1.0):
            if jvm.context_stopped(spark):
                say("filterspark serve: the Spark application stopped")
                return 1
            if options.refresh_seconds:
                state, names = _refresh(spark, wh, state, names, say)
        say("filterspark serve: stopping")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if thrift is not None:
            jvm.stop_thrift_server(thrift)
        if spark is not None:
            jvm.stop_session(spark)
        shutil.rmtree(scratch, ignore_errors=True)
        if previous:
            say("filterspark serve: stopped")


def _refresh(spark, wh: Warehouse, state: frozenset, names: list[str], say) -> tuple[frozenset, list[str]]:
    """Re-register the warehouse when its tables changed; the new state and names (the old
    ones after an error, so the next round tries again)."""
    try:
        current = warehouse_state(spark, wh)
        if current == state:
            return state, names
        new_names = register_tables(spark, wh)
    except (*jvm.spark_errors(), OSError) as err:
        say(f"filterspark serve: re-registration failed, trying again: {str(err).splitlines()[0]}")
        return state, names
    added = sorted(set(new_names) - set(names))
    say(f"filterspark serve: {_names_line(new_names)}" + (f" (new: {', '.join(added)})" if added else ""))
    return current, new_names
