#!/usr/bin/env bash
# vLLM 0.33 for the GPU machine, beside the 0.32 bundle of ../shared/gpu/build-vllm-bundle.sh (whose dependency
# pieces w1..w3 serve 0.33 too): the slim 0.33 package from .venv-vllm033 (`make test-vllm033` builds it), cut in
# three parts, and the one dependency 0.32's pieces lack (orjson).  Output: .gpu-bundle-033/p1 (send with w3) and
# .gpu-bundle-033/p23 (send alone, then run tools/gpu/install_vllm033.sh).  Run from the project root.
set -euo pipefail
VENV=${VENV:-.venv-vllm033}
OUT=.gpu-bundle-033
SP=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
VER=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('vllm'))")
rm -rf "$OUT" && mkdir -p "$OUT/p1" "$OUT/p23"
grep -qx "/$OUT/" .git/info/exclude 2>/dev/null || echo "/$OUT/" >> .git/info/exclude
tmp=$(mktemp -d)
(cd "$SP" && tar -c --exclude=__pycache__ \
  --exclude='vllm/vllm_flash_attn/_vllm_fa*_C.abi3.so' --exclude=vllm/third_party/deep_gemm \
  --exclude=vllm/third_party/fmha_sm100 --exclude='vllm/_flashmla*_C.abi3.so' --exclude=vllm/_flashkda_C.abi3.so \
  --exclude=vllm/_deepselect_C.abi3.so --exclude=vllm/_qutlass_C.abi3.so \
  --exclude=vllm/_moe_C_stable_libtorch.abi3.so --exclude=vllm/vllm-rs \
  vllm "vllm-$VER.dist-info") | xz -9 -T0 > "$tmp/vllm.tar.xz"
split -b 24000000 "$tmp/vllm.tar.xz" "$tmp/part."
mv "$tmp/part.aa" "$OUT/p1/" && mv "$tmp"/part.* "$OUT/p23/"
plat=(--platform any --platform manylinux2014_x86_64)
for v in 2_17 2_24 2_26 2_27 2_28 2_31 2_34 2_35; do plat+=(--platform "manylinux_${v}_x86_64"); done
"$VENV/bin/pip" download -q --no-deps --only-binary=:all: --python-version 3.12 "${plat[@]}" -d "$OUT/p23" \
  "orjson==$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('orjson'))")"
rm -rf "$tmp"
du -sh "$OUT"/p1 "$OUT"/p23
