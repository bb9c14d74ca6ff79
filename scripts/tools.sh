# shellcheck shell=bash
# Sourced by the scripts that need tools from PyPI or npm (the chart's validators, the HTTP
# API's fuzzer, the AsyncAPI parser): each set lives in a folder of its own under .tools/
# (gitignored), made again only when its requirements (or lock) file changes.

# pytools_venv NAME REQUIREMENTS: make .tools/NAME/venv from REQUIREMENTS unless it is
# up to date; fails with a clear message where that cannot be done.
pytools_venv() {
  local venv=.tools/$1/venv req=$2
  if cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then return 0; fi
  echo "installing $req into $venv (once)"
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; return 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" ||
    { echo "pip could not install $req" >&2; rm -rf "$venv"; return 1; }
  cp "$req" "$venv/requirements.txt"
}

# npm_tools NAME DIR: install DIR's package.json as locked by its package-lock.json into
# .tools/NAME (npm ci: exactly the lock, integrity checked), unless it is up to date.
npm_tools() {
  local dest=.tools/$1 src=$2
  if cmp -s "$src/package-lock.json" "$dest/package-lock.json" 2>/dev/null && [ -d "$dest/node_modules" ]; then
    return 0
  fi
  command -v npm >/dev/null || { echo "npm is missing (Debian: apt-get install npm)" >&2; return 1; }
  echo "installing $src/package.json into $dest (once)"
  rm -rf "$dest" && mkdir -p "$dest" && cp "$src/package.json" "$src/package-lock.json" "$dest/"
  (cd "$dest" && npm ci --silent --no-audit --no-fund) ||
    { echo "npm ci of $src/package.json failed" >&2; rm -rf "$dest"; return 1; }
}
