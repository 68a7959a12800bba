#!/usr/bin/env bash
# Build the C++ runtime (library medfm_runtime, CLI medfm-run, ctest tests) in Release mode.
#
# Usage: scripts/build_cpp_runtime.sh [BUILD_DIR]     (default: build/cpp; incremental when it exists)
# Environment: PYTHON (the Python whose onnxruntime wheel supplies the library; default .venv/bin/python,
# else python3), JOBS (parallel compile jobs; default: all cores), CMAKE_ARGS (extra configure arguments,
# e.g. "-DONNXRUNTIME_ROOT=/opt/onnxruntime" to use your own ONNX Runtime instead of the wheel's).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$here/build/cpp}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install cmake g++)" >&2; exit 1; }
done

# shellcheck disable=SC2086
if [[ " ${CMAKE_ARGS:-} " != *"-DONNXRUNTIME_ROOT="* ]]; then
  bash "$here/scripts/setup_onnxruntime_headers.sh"
fi

generator=()
if [[ ! -f "$build/CMakeCache.txt" ]] && command -v ninja >/dev/null; then generator=(-G Ninja); fi
# shellcheck disable=SC2086
cmake -S "$here" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$python" ${CMAKE_ARGS:-}
cmake --build "$build" -j "${JOBS:-$(nproc)}"
echo "built: $build/medfm-run  (tests: ctest --test-dir $build)"
