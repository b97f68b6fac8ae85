"""The Spark job's session and what it sends to the executors (pipeline.prediction.spark_articles).

* `spark_session`: the active session, else a new one from the `spark` config section; a local one listens on
  `spark.local_bind` only (127.0.0.1 by default) and has no web UI unless `spark.ui` is true;
* `ship_model`, `ship_lexicon`, `ship_code`: the stance model directory, the cue lexicon and this package, staged
  under names made of their digests and added to the SparkContext once per application.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

_SHIPPED: dict[tuple[str, str], str] = {}  # (application id, name) -> path added to that SparkContext


def _ship(spark, name: str, path: Path, *, py_file: bool = False) -> str:
    key = (spark.sparkContext.applicationId, name)
    if key not in _SHIPPED:
        if py_file:
            spark.sparkContext.addPyFile(str(path))
        else:
            spark.sparkContext.addFile(str(path), recursive=Path(path).is_dir())
        _SHIPPED[key] = str(path)
    return name


def ship_model(spark, model_dir: Path, model_id: str) -> str:
    """Send the stance model directory to every executor (SparkContext.addFile) under a name made of its digest;
    returns the name the executors open it by (`SparkFiles.get`)."""
    name = "stance-model-" + model_id.rsplit("#", 1)[-1]
    staged = Path(tempfile.gettempdir()) / "pipeline-spark" / name
    if not staged.exists():
        tmp = staged.with_name(f".{name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model_dir, tmp)
        try:
            os.replace(tmp, staged)  # atomic: a staged copy is always complete
        except OSError:  # another process staged the same digest first
            shutil.rmtree(tmp, ignore_errors=True)
    return _ship(spark, name, staged)


def ship_lexicon(spark, path: Path | str) -> str:
    """Send the cue lexicon file (rules_fired) to every executor under a name made of its digest; returns that name."""
    import hashlib

    path = Path(path)
    data = path.read_bytes()
    name = f"lexicon-{hashlib.sha256(data).hexdigest()[:16]}{path.suffix}"
    staged = Path(tempfile.gettempdir()) / "pipeline-spark" / name
    if not staged.exists():
        staged.parent.mkdir(parents=True, exist_ok=True)
        tmp = staged.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, staged)
    return _ship(spark, name, staged)


def ship_code(spark) -> None:
    """This package as a zip on the executors' sys.path, so that they run the driver's code, not another install."""
    import hashlib

    package = Path(__file__).resolve().parents[1]  # the whole pipeline package
    files = sorted(p for p in package.rglob("*.py"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "pipeline-spark" / f"pipeline-{digest}.zip"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, Path("pipeline") / path.relative_to(package))
        os.replace(tmp, target)
    _ship(spark, target.name, target, py_file=True)


def local_master(cfg) -> bool:
    """Whether a new session runs in this process alone: spark.master local[...], or none given under plain python
    (pyspark's default, local[*]); under spark-submit (which starts Python with PYSPARK_GATEWAY_PORT set) the
    submitter's settings decide."""
    master = cfg.spark.master
    if master:
        return str(master).startswith("local")
    return "PYSPARK_GATEWAY_PORT" not in os.environ


def spark_session(cfg):
    """(session, created here): the active SparkSession (spark-submit, a notebook, a test), else a new one with
    `spark.master` (default local[*]), `spark.app_name` and `spark.conf`. A local one listens on
    `spark.local_bind` only (driver, block manager and, with `spark.ui`, the web UI; default 127.0.0.1) and has
    no web UI unless `spark.ui` is true: nothing on the network can reach it."""
    import sys

    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(str(cfg.spark.app_name))
    if cfg.spark.master:  # else spark-submit's --master, or local[*] under plain python (pyspark's default)
        builder = builder.master(str(cfg.spark.master))
    builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
    if local_master(cfg):
        bind = cfg.spark.get("local_bind")
        if bind:
            # The web UI binds to SPARK_LOCAL_IP (else every address), read when the JVM starts.
            os.environ.setdefault("SPARK_LOCAL_IP", str(bind))
            builder = builder.config("spark.driver.bindAddress", str(bind)).config("spark.driver.host", str(bind))
        builder = builder.config("spark.ui.enabled", str(bool(cfg.spark.get("ui", False))).lower())
    from pipeline.core.progress import interactive

    # Spark's console progress bar on a terminal only (pipeline.core.progress); spark.conf may still set it
    builder = builder.config("spark.ui.showConsoleProgress", str(interactive()).lower())
    for key, value in (cfg.spark.conf or {}).items():
        builder = builder.config(str(key), str(value))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")  # Spark's INFO lines would drown the stage's log
    return session, True

