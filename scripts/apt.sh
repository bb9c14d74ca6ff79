# shellcheck shell=bash
# Sourced by the scripts that install what is missing from Debian's packages.
#
# apt_ensure COMMAND PACKAGE: when COMMAND is not on the PATH, install PACKAGE with
# apt-get (with sudo when not root), running `apt-get update` first: a fresh machine has
# no package lists yet. Fails with a clear message where that cannot be done.
apt_ensure() {
  local command=$1 package=$2
  command -v "$command" >/dev/null 2>&1 && return 0
  local -a sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "$command is missing and cannot be installed: you are not root and sudo is not available (apt-get install $package)" >&2
      return 1
    }
    sudo=(sudo)
  fi
  command -v apt-get >/dev/null 2>&1 || {
    echo "$command is missing and apt-get is not available here: install $package yourself" >&2
    return 1
  }
  echo "installing Debian's $package package (for $command)..."
  "${sudo[@]}" apt-get update -qq || { echo "apt-get update failed" >&2; return 1; }
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" \
    || { echo "apt-get install $package failed" >&2; return 1; }
}
