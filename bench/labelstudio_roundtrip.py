"""Drive a running Label Studio through its REST API: the round trip of `pipeline label`, end to end.

    python bench/labelstudio_roundtrip.py --url http://127.0.0.1:8089 --token <API token> \
        --tasks <run dir>/labelstudio/tasks.json --config <run dir>/labelstudio/labeling_config.xml \
        --answers tests/fixtures/labelstudio/answers.csv --out tests/fixtures/labelstudio/export.json

1. creates a project with the exported labeling config,
2. imports the tasks (with their pre-annotations),
3. annotates the tasks whose sentence_id is in --answers (CSV sentence_id,label[,annotator]; label "cancel" skips
   the task, as an annotator pressing Skip does) through the annotations API, as the token's user or, where the
   annotator column gives an e-mail, as that user (created if missing), so a task can carry two annotations,
4. exports the project as the UI's Export → JSON does (an export snapshot, annotators with their e-mail) to
   --out, ready for
   `python -m pipeline label labeling.import_file=<out>`.

Only the standard library is used, so any Python runs it (Label Studio lives in its own venv; see docs/label.md).
--token takes a legacy API token (sent as "Token …") or a personal access token (a JWT refresh token,
exchanged at /api/token/refresh for a Bearer access token).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class Client:
    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        if token.count(".") == 2:  # a JWT: personal access token → short-lived access token
            access = self._call("POST", "/api/token/refresh", {"refresh": token}, auth=None)["access"]
            self.auth = f"Bearer {access}"
        else:
            self.auth = f"Token {token}"

    def _call(self, method: str, path: str, body=None, auth: str | None = "self"):
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth == "self":
            request.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise SystemExit(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise SystemExit(f"{method} {path}: cannot reach Label Studio at {self.url} ({exc.reason})") from None
        return json.loads(raw) if raw else None

    def call(self, method: str, path: str, body=None):
        return self._call(method, path, body)


def user_id(client: Client, email: str) -> int:
    """The id of the Label Studio user with this e-mail, created (no password, API only) if there is none."""
    users = client.call("GET", "/api/users/")
    for user in users if isinstance(users, list) else users.get("results", []):
        if user.get("email") == email:
            return int(user["id"])
    created = client.call("POST", "/api/users/", {"email": email, "username": email.split("@")[0]})
    return int(created["id"])


def export_snapshot(client: Client, pid: int):
    """What Export → JSON in the UI gives: a snapshot whose annotations carry the annotator's e-mail."""
    options = {"annotations__completed_by": {"only_id": False}}  # annotator e-mail, not just the user id
    snapshot = client.call("POST", f"/api/projects/{pid}/exports",
                           {"title": "pipeline round trip", "serialization_options": options})
    for _ in range(60):
        if snapshot.get("status") == "completed":
            return client.call("GET", f"/api/projects/{pid}/exports/{snapshot['id']}/download?exportType=JSON")
        if snapshot.get("status") == "failed":
            break
        time.sleep(1)
        snapshot = client.call("GET", f"/api/projects/{pid}/exports/{snapshot['id']}")
    print("warning: export snapshot did not complete; using the plain export (annotators as ids)", file=sys.stderr)
    return client.call("GET", f"/api/projects/{pid}/export?exportType=JSON")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="Label Studio base URL, e.g. http://127.0.0.1:8089")
    ap.add_argument("--token", required=True, help="API token (Account & Settings → Access Token)")
    ap.add_argument("--tasks", required=True, type=Path, help="tasks.json written by `pipeline label --export`")
    ap.add_argument("--config", required=True, type=Path, help="labeling_config.xml written beside it")
    ap.add_argument("--answers", required=True, type=Path, help="CSV sentence_id,label of the annotations to make")
    ap.add_argument("--out", required=True, type=Path, help="where to write Label Studio's JSON export")
    ap.add_argument("--title", default="stance round trip")
    ap.add_argument("--from-name", default="stance")
    ap.add_argument("--to-name", default="text")
    args = ap.parse_args(argv)

    client = Client(args.url, args.token)
    tasks = json.loads(args.tasks.read_text(encoding="utf-8"))
    with args.answers.open(encoding="utf-8") as fh:
        answers: dict[str, list[tuple[str, str]]] = {}
        for row in csv.DictReader(fh):
            answers.setdefault(row["sentence_id"], []).append((row["label"], (row.get("annotator") or "").strip()))

    project = client.call("POST", "/api/projects", {"title": args.title,
                                                     "label_config": args.config.read_text(encoding="utf-8")})
    pid = project["id"]
    print(f"project {pid} created at {args.url}/projects/{pid}")
    imported = client.call("POST", f"/api/projects/{pid}/import", tasks)
    print(f"imported {imported.get('task_count')} tasks, {imported.get('prediction_count')} predictions")

    listed = client.call("GET", f"/api/tasks?project={pid}&page_size=1000")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    done = 0
    for task in listed:
        sid = task["data"].get("sentence_id")
        for label, annotator in answers.get(sid, []):
            if label == "cancel":
                body = {"result": [], "was_cancelled": True}
            else:
                body = {"result": [{"from_name": args.from_name, "to_name": args.to_name, "type": "choices",
                                    "value": {"choices": [label]}}], "was_cancelled": False, "lead_time": 12.5}
            if annotator:
                body["completed_by"] = user_id(client, annotator)
            client.call("POST", f"/api/tasks/{task['id']}/annotations", body)
            done += 1
            print(f"  task {task['id']} {sid}: {label} {annotator}".rstrip())
    missing = sorted(set(answers) - {t['data'].get('sentence_id') for t in listed})
    if missing:
        print(f"warning: {len(missing)} answer(s) name sentences that are not among the tasks: {missing}", file=sys.stderr)

    export = export_snapshot(client, pid)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(export, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"{done} annotations made; exported {len(export)} annotated task(s) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
