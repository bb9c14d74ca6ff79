# shellcheck shell=bash
# Sourced by the scripts that need Python tools from PyPI (the chart's validators, the
# HTTP API's fuzzer): each set lives in a venv of its own under .tools/ (gitignored),
# made again only when its requirements file changes.
#
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
