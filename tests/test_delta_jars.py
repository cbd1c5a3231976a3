"""Delta's JARs from the installation (``filterspark setup``): which resolved JARs are
copied, and the spark-defaults.conf that setup writes (no Ivy on any later start)."""
from __future__ import annotations

import zipfile
from pathlib import Path

from filterspark.engine.delta_jars import delta_maven_coordinate, delta_on_classpath, jar_artifact, jars_to_add
from filterspark.engine.session import DELTA_SETTINGS, SHORT_LIVED_JVM_OPTIONS, install_spark_defaults


def _jar(path: Path, *classes: str) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        for name in classes:
            archive.writestr(name, b"\xca\xfe\xba\xbe")
    return str(path)


def test_artifact_names_of_ivy_and_spark_jars():
    assert jar_artifact("/x/io.delta_delta-spark_4.2_2.13-4.4.0.jar", ivy=True) == "delta-spark_4.2_2.13"
    assert jar_artifact("com.fasterxml.jackson.datatype_jackson-datatype-jdk8-2.13.5.jar", ivy=True) == "jackson-datatype-jdk8"
    assert jar_artifact("jackson-core-2.21.2.jar", ivy=False) == "jackson-core"
    assert jar_artifact("RoaringBitmap-1.6.10.jar", ivy=False) == "RoaringBitmap"


def test_only_jars_spark_lacks_are_added(tmp_path):
    spark_jars, ivy = tmp_path / "jars", tmp_path / "ivy"
    spark_jars.mkdir(), ivy.mkdir()
    _jar(spark_jars / "jackson-core-2.21.2.jar", "com/fasterxml/jackson/core/JsonParser.class")
    _jar(spark_jars / "jcl-over-slf4j-2.0.17.jar", "org/apache/commons/logging/LogFactory.class")
    resolved = [
        _jar(ivy / "io.delta_delta-spark_4.2_2.13-4.4.0.jar", "io/delta/tables/DeltaTable.class"),
        _jar(ivy / "io.delta_delta-storage-4.4.0.jar", "io/delta/storage/LogStore.class"),
        # an older version of an artifact Spark ships: Spark's copy is kept
        _jar(ivy / "com.fasterxml.jackson.core_jackson-core-2.13.5.jar", "com/fasterxml/jackson/core/JsonParser.class"),
        # another artifact with classes Spark already has: two copies would race on one class path
        _jar(ivy / "commons-logging_commons-logging-1.3.0.jar", "org/apache/commons/logging/LogFactory.class",
             "org/apache/commons/logging/impl/Jdk14Logger.class"),
    ]
    added = jars_to_add(resolved, spark_jars)
    assert sorted(Path(p).name for p in added) == ["io.delta_delta-spark_4.2_2.13-4.4.0.jar", "io.delta_delta-storage-4.4.0.jar"]


def test_spark_defaults_keep_user_lines_and_drop_the_package_line(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf))
    (conf / "spark-defaults.conf").write_text(
        "spark.executor.memory 3g\n"
        "# added by `filterspark setup`: Delta Lake for spark-submit\n"
        f"spark.jars.packages {delta_maven_coordinate()}\n"
        f"spark.sql.extensions {DELTA_SETTINGS['spark.sql.extensions']}\n"
        "spark.driver.defaultJavaOptions -XX:TieredStopAtLevel=1\n"  # an older setup's value
        "\n"
        "spark.sql.ansi.enabled false\n"
    )
    path = install_spark_defaults(str(tmp_path), local_jars=True)
    lines = path.read_text().splitlines()
    settings = dict(line.split(None, 1) for line in lines if line and not line.startswith("#"))
    assert settings["spark.executor.memory"] == "3g" and settings["spark.sql.ansi.enabled"] == "false"
    assert "spark.jars.packages" not in settings
    assert settings["spark.sql.catalog.spark_catalog"] == DELTA_SETTINGS["spark.sql.catalog.spark_catalog"]
    assert settings["spark.driver.defaultJavaOptions"] == SHORT_LIVED_JVM_OPTIONS
    assert install_spark_defaults(str(tmp_path), local_jars=True).read_text().splitlines() == lines  # idempotent
    # Without local JARs (a read-only installation) the package is resolved at each start.
    assert f"spark.jars.packages {delta_maven_coordinate()}" in install_spark_defaults(str(tmp_path), local_jars=False).read_text()


def test_this_installation_has_delta_on_its_class_path():
    """`make install` ran `filterspark setup`: Delta's JARs are in pyspark's jars/, so no
    session of this project resolves a package."""
    assert delta_on_classpath({})
