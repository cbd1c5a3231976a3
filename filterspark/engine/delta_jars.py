"""Where Delta Lake's JARs come from: the Spark installation's own ``jars/`` folder once
``filterspark setup`` has put them there, else Maven (``spark.jars.packages``).

Resolving ``spark.jars.packages`` runs Ivy in every new JVM (seconds, and a report of
dozens of lines on every ``spark-submit``). ``filterspark setup`` resolves the Delta
package once and copies the JARs it needs that Spark does not ship into
``<SPARK_HOME>/jars``, where every driver, executor and ``spark-submit`` of that
installation finds them on its class path, as on a cluster image or Databricks.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Mapping

from filterspark.delta import jvm


def delta_maven_coordinate() -> str:
    """Maven coordinate of the Delta JAR matching the installed pyspark and delta-spark."""
    from importlib.metadata import version

    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


def spark_home(home: str | None = None) -> Path:
    """The Spark installation in use: ``home``, else ``SPARK_HOME``, else the installed pyspark."""
    if home or os.environ.get("SPARK_HOME"):
        return Path(home or os.environ["SPARK_HOME"])
    import pyspark

    return Path(os.path.dirname(pyspark.__file__))


def delta_on_classpath(preset: Mapping[str, str]) -> bool:
    """True when Delta's JARs need no Maven resolution: Databricks, supplied by the user's
    settings (``preset``), or in the Spark installation's ``jars/`` folder."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True
    for key in ("spark.jars", "spark.jars.packages"):
        if "delta-spark" in preset.get(key, "") or "delta-core" in preset.get(key, ""):
            return True
    import pyspark

    homes = {spark_home(), Path(os.path.dirname(pyspark.__file__))}  # SPARK_HOME's and pip's
    return any(glob.glob(str(h / "jars" / "delta-spark*.jar")) for h in homes)


def delta_submit_args() -> list[str]:
    """The ``spark-submit`` arguments that give a new application Delta's JARs: none when
    they are on the installation's class path, else ``--packages <coordinate>``."""
    return [] if delta_on_classpath({}) else ["--packages", delta_maven_coordinate()]


def jar_artifact(path: str, ivy: bool) -> str:
    """A JAR's artifact name without version: Ivy's ``org_artifact-1.2.jar``, Spark's ``artifact-1.2.jar``."""
    name = os.path.basename(path)
    if ivy:
        name = name.split("_", 1)[-1]
    return re.sub(r"-\d.*\.jar$", "", name)


def _classes(path: str) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return {n for n in archive.namelist() if n.endswith(".class") and not n.startswith("META-INF/")}


def jars_to_add(resolved: list[str], jars_dir: Path) -> list[str]:
    """The resolved JARs that ``jars_dir`` lacks: neither the same artifact in another
    version (Spark's copy is kept) nor a JAR that provides the same classes (for example
    ``commons-logging`` beside Spark's ``jcl-over-slf4j``: two copies of one class on one
    class path would be loaded in an unspecified order)."""
    shipped = [str(p) for p in jars_dir.glob("*.jar")]
    shipped_artifacts = {jar_artifact(p, ivy=False) for p in shipped}
    candidates = [j for j in resolved if jar_artifact(j, ivy=True) not in shipped_artifacts]
    if not candidates:
        return []
    shipped_classes: set[str] = set()
    for path in shipped:
        shipped_classes |= _classes(path)
    return [j for j in candidates if not (_classes(j) & shipped_classes)]


def install_delta_jars(home: str | None = None) -> list[str]:
    """Resolve Delta's package once (Ivy, through a short-lived JVM) and copy the JARs Spark
    lacks into ``<SPARK_HOME>/jars``; returns the names copied (none when Delta is there
    already). Raises ``OSError`` when that folder cannot be written."""
    jars_dir = spark_home(home) / "jars"
    if glob.glob(str(jars_dir / "delta-spark*.jar")):
        return []
    resolved = jvm.resolve_packages([delta_maven_coordinate()])
    added = jars_to_add(resolved, jars_dir)
    # delta-spark last: its presence is what marks the installation as done.
    for path in sorted(added, key=lambda j: "delta-spark" in os.path.basename(j)):
        target = jars_dir / os.path.basename(path).split("_", 1)[-1]
        shutil.copyfile(path, str(target) + ".part")
        os.replace(str(target) + ".part", target)
    return [os.path.basename(p).split("_", 1)[-1] for p in added]


def delta_driver_classpath() -> dict[str, str]:
    """Settings that put Delta's JARs on the driver's own class path (JDBC sessions need it),
    unless they are there already: the resolved JARs as ``spark.jars`` (executors get them
    from there) without a second resolution, and those Spark does not ship itself (the
    others already resolve to Spark's copies) as ``spark.driver.extraClassPath``."""
    if delta_on_classpath({}):
        return {}
    jars_dir = spark_home() / "jars"
    shipped = {jar_artifact(n, ivy=False) for n in os.listdir(jars_dir)}
    jars = jvm.resolve_packages([delta_maven_coordinate()])
    extra = [j for j in jars if jar_artifact(j, ivy=True) not in shipped]
    return {"spark.jars": ",".join(jars), "spark.jars.packages": "", "spark.driver.extraClassPath": os.pathsep.join(extra)}
