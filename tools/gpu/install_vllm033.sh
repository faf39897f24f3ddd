#!/usr/bin/env bash
# GPU machine: swap vLLM 0.32 for 0.33 (tools/gpu/bundle_vllm033.sh builds the parts here).  Calls back to back on
# one warm machine, each running ../shared/gpu/device-setup.sh and then this script: w1, w2 (0.32's dependency
# pieces), w3 with .gpu-bundle-033/p1 (stashed in /tmp), then .gpu-bundle-033/p23 (joined, unpacked, orjson).
# DEVICE_SETUP names a copy of device-setup.sh that travels (../shared does not): default .gpuwork/device-setup.sh.
set -u
S=$(python3 -c "import site; print(site.getsitepackages()[0])")
mkdir -p /tmp/a033 && cp .gpu-bundle-033/p*/part.* /tmp/a033/ 2>/dev/null
ls -la /tmp/a033
if [ ! -d .gpu-bundle-033/p23 ]; then echo "vLLM 0.33's first part stashed; send .gpu-bundle-033/p23 next"; exit 0; fi
rm -rf "$S/vllm" "$S"/vllm-0.32.0.dist-info
cat /tmp/a033/part.* | xz -d | tar -x -C "$S" && echo "vllm 0.33 unpacked into $S"
python3 -m pip install -q --no-index --no-deps .gpu-bundle-033/p23/*.whl 2>&1 | grep -v "as the 'root' user"
bash "${DEVICE_SETUP:-.gpuwork/device-setup.sh}" /nonexistent
python3 -c "import vllm; print('vllm', vllm.__version__)"
python3 -c "import torch, vllm._C_stable_libtorch" && echo "0.33 kernels load" || echo "0.33 kernels DO NOT load"
