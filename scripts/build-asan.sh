#!/usr/bin/env bash
# Builds the addon with AddressSanitizer and UBSan into build-asan/Release/.
# node-gyp always writes build/, so the ASan build happens in a scratch copy.
# Load it with VUBLK_NATIVE_BUILD=asan and LD_PRELOAD of the ASan runtime
# (node itself is not instrumented), as test/native/asan.test.ts does.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r "$root/native" "$root/binding.gyp" "$scratch/"
ln -s "$root/node_modules" "$scratch/node_modules"
cd "$scratch"
# Node's own headers when the system Node ships them (Debian, NodeSource);
# npm passes the same as npm_config_nodedir, but this script runs node-gyp directly.
nodedir_arg=()
prefix=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
if [ -f "$prefix/include/node/node.h" ]; then nodedir_arg=(--nodedir="$prefix"); fi
"$root/node_modules/.bin/node-gyp" rebuild "${nodedir_arg[@]}" \
  -- -Dextra_cflags="-fsanitize=address -fsanitize=undefined -fno-omit-frame-pointer -g" \
     -Dextra_ldflags="-fsanitize=address -fsanitize=undefined" >/dev/null
mkdir -p "$root/build-asan/Release"
cp build/Release/vublk_native.node "$root/build-asan/Release/"
echo "built $root/build-asan/Release/vublk_native.node"
