#!/usr/bin/env bash
# Every C++ and CUDA source of the project is formatted as .clang-format says (Google's style,
# 120 columns, includes grouped and sorted). Fails naming the files that are not; to fix them:
#   tests/style/check_format.sh --fix
set -euo pipefail
cd "$(dirname "$0")/../.."
mapfile -t files < <(find core server client proto tests \( -name '*.cc' -o -name '*.h' -o -name '*.cu' \) \
  -not -path 'tests/fuzz/corpus/*' | sort)
if [[ "${1:-}" == "--fix" ]]; then
  clang-format -i "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if ((${#bad[@]})); then
  echo "not formatted as .clang-format says (run tests/style/check_format.sh --fix):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi
echo "${#files[@]} files formatted"
