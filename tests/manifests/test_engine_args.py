"""The engine container's `vllm serve` arguments parse with vLLM's own command line, kv-transfer-config included.

vLLM's parser validates `--kv-transfer-config` into its pydantic `KVTransferConfig` (unknown keys and bad types
fail), and rejects unknown flags. Run in a subprocess: importing vLLM is slow and it needs its platform set to CPU
on a machine without a GPU (as `vllm bench` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import manifest_checks as mc
import pytest
from manifest_render import REPO, rendered

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PARSE = """
import json, sys
from vllm import platforms
from vllm.platforms.cpu import CpuPlatform
if platforms.current_platform.is_unspecified():
    platforms.current_platform = CpuPlatform()
import vllm.entrypoints.cli.serve as serve
from vllm.utils.argparse_utils import FlexibleArgumentParser

def parse(argv):
    parser = FlexibleArgumentParser(prog="vllm")
    (cmd,) = serve.cmd_init()
    cmd.subparser_init(parser.add_subparsers(dest="subparser"))
    try:
        args = parser.parse_args(argv)
        cmd.validate(args)
    except SystemExit as exc:
        return {"exit": exc.code}
    ktc = args.kv_transfer_config
    return {"exit": 0, "model": args.model_tag, "port": args.port,
            "kv_transfer_config": ktc.model_dump() if hasattr(ktc, "model_dump") else vars(ktc)}

print(json.dumps([parse(argv) for argv in json.loads(sys.argv[1])], default=str))
"""


def parse_with_vllm(*argvs: list[str]) -> list[dict]:  # type: ignore[type-arg]
    pytest.importorskip("vllm")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "ERROR", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", PARSE, json.dumps(list(argvs))],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_engine_args_are_valid_vllm_serve_arguments() -> None:
    (engine,) = mc.engines(list(rendered("base")))
    serve_args = mc.argv(engine.container)[2:]  # after the image's wrapper and `vllm`
    assert serve_args[0] == "serve"
    kv_json = mc.flag_value(serve_args, mc.KV_TRANSFER_FLAG)
    bad_key = kv_json.replace("kv_load_failure_policy", "kv_load_failure_polcy")  # type: ignore[union-attr]
    good, misspelt_flag, misspelt_key = parse_with_vllm(
        serve_args,
        [*serve_args, "--gpu-memory-utilisation", "0.9"],
        ["serve", "m", mc.KV_TRANSFER_FLAG, bad_key],
    )
    assert good["exit"] == 0, good
    assert good["model"] == serve_args[1]
    assert good["port"] == mc.engine_port(engine)
    ktc = good["kv_transfer_config"]
    expected = mc.kv_transfer_config(engine)
    assert {k: ktc[k] for k in expected} == expected  # vLLM kept every key as written
    assert misspelt_flag["exit"] == 2 and misspelt_key["exit"] == 2
