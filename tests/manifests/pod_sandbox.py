"""Run a rendered container's own command on this machine, with its volumes mapped to temporary directories.

What the manifests say is what runs: the container's command and args, its environment, and the files of its
ConfigMap volumes. Only absolute paths under the container's mount points are rewritten (in arguments,
environment values and ConfigMap file contents) to the directories standing in for those volumes, in one pass so
a rewritten path is never rewritten again.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import manifest_checks as mc

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PodSandbox:
    def __init__(self, docs: Any, workload: mc.Workload, base: Path) -> None:
        self.workload = workload
        self.mounts: dict[str, Path] = {}
        volumes = {v["name"]: v for v in workload.pod.get("volumes") or []}
        for m in workload.container.get("volumeMounts") or []:
            local = base / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            self.mounts[m["mountPath"].rstrip("/")] = local
        # One alternation, longest mount first, anchored at path boundaries: "/tmp" never matches "/var/tmp".
        paths = sorted(self.mounts, key=len, reverse=True)
        self._pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, paths)) + r")(?=/|$|[^\w.-])")
        for m in workload.container.get("volumeMounts") or []:
            cm = (volumes.get(m["name"]) or {}).get("configMap")
            if cm:
                (obj,) = mc.find(docs, "ConfigMap", cm["name"])
                for key, text in (obj.get("data") or {}).items():
                    (self.mounts[m["mountPath"].rstrip("/")] / key).write_text(self.rewrite(text))

    def rewrite(self, text: str) -> str:
        return self._pattern.sub(lambda match: str(self.mounts[match.group(1)]), text)

    def path(self, container_path: str) -> Path:
        return Path(self.rewrite(container_path))

    def argv(self) -> list[str]:
        args = [self.rewrite(a) for a in mc.argv(self.workload.container)]
        exe = BIN / args[0]
        assert exe.exists(), f"{args[0]}: no such console script in the project (pyproject [project.scripts])"
        return [str(exe), *args[1:]]

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVFS_")}
        env.update({k: self.rewrite(v) for k, v in mc.env_of(self.workload.container).items()})
        env["HOME"] = str(self.mounts.get("/tmp", REPO))  # the images' HOME is not writable
        env.update(overrides)
        return env

    def start(self, log: IO[bytes], **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv(), stdout=log, stderr=subprocess.STDOUT, env=self.env(**env), cwd=REPO
        )

    def run(self, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(), capture_output=True, text=True, env=self.env(**env), cwd=REPO, timeout=timeout
        )


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""
