"""A local Spark session listens on the loopback address only (issue 17 item 8: its UI was on *:4040 and its
driver on the host's address). Needs the `spark` extra and a Java runtime; skipped with the reason otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyspark", reason="pyspark is not installed: `pip install -e '.[spark]'` runs this test")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs a Java runtime (java on PATH or JAVA_HOME)", allow_module_level=True)
if not Path("/proc/net/tcp").exists():
    pytest.skip("reads the listening sockets from /proc (Linux)", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent

# In a fresh process (no active session): a session from the stage's config, then the addresses its JVM listens
# on, read from /proc. Prints one JSON line per session: the config overrides, the UI URL, the addresses.
LISTENING = r"""
import json, os, sys
from pipeline.core.config import compose_config
from pipeline.prediction.spark_session import spark_session

def listening(pid):
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                found.append(cols[1])
    return found

for overrides in (["spark.master='local[1]'"], ["spark.master='local[1]'", "spark.ui=true"]):
    spark, created = spark_session(compose_config("spark_predict", overrides))
    pid = spark.sparkContext._gateway.proc.pid
    print(json.dumps({"overrides": overrides, "ui": spark.sparkContext.uiWebUrl, "listening": listening(pid)}))
    spark.stop()
"""

LOOPBACK = ("0100007F:", "0000000000000000FFFF00000100007F:", "00000000000000000000000001000000:")


def test_a_local_session_listens_on_the_loopback_address_only(tmp_path):
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env.pop("SPARK_LOCAL_IP", None)
    done = subprocess.run([sys.executable, "-c", LISTENING], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sessions = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(sessions) == 2
    default, with_ui = sessions
    assert default["ui"] is None  # no web UI unless spark.ui=true
    assert with_ui["ui"] and "127.0.0.1" in with_ui["ui"]
    for session in sessions:
        assert session["listening"], session  # the driver does listen (py4j, RPC, block manager)
        others = [a for a in session["listening"] if not a.startswith(LOOPBACK)]
        assert not others, session
