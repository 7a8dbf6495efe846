#!/usr/bin/env bash
# Install marrownode as a systemd service (Debian 12), as root, from this checkout:
#   a virtualenv in /opt/marrownode (Debian's Python refuses system-wide pip installs),
#   /usr/local/bin/marrownode -> /opt/marrownode/bin/marrownode for the administrator,
#   the example configuration in /etc/marrownode/marrownode.toml (kept if it exists),
#   README and docs in /usr/share/doc/marrownode, the unit in /etc/systemd/system,
#   and the unit checked with systemd-analyze verify.
# Options: --root DIR installs under DIR instead of / (packaging, tests; no daemon-reload).
#          --system-site-packages lets the virtualenv use packages Python already has.
set -euo pipefail

root=""
venv_options=()
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2%/}"; shift 2 ;;
    --system-site-packages) venv_options+=(--system-site-packages); shift ;;
    *) echo "usage: $0 [--root DIR] [--system-site-packages]" >&2; exit 2 ;;
  esac
done
source_dir="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/marrownode

python3 -m venv "${venv_options[@]}" "$root$prefix"
"$root$prefix/bin/python" -m pip install -q --disable-pip-version-check "$source_dir"
if [ -n "$root" ]; then
  # A staged tree is relocatable: its scripts name the interpreter where it will live.
  grep -l "^#!$root$prefix/bin/" "$root$prefix"/bin/* 2>/dev/null \
    | xargs -r sed -i "1s|^#!$root$prefix/bin/|#!$prefix/bin/|"
fi

install -d -m 0755 "$root/usr/local/bin"
ln -sfn "$prefix/bin/marrownode" "$root/usr/local/bin/marrownode"

install -d -m 0750 "$root/etc/marrownode"
if [ ! -e "$root/etc/marrownode/marrownode.toml" ]; then
  install -m 0640 "$source_dir/config/marrownode.toml" "$root/etc/marrownode/marrownode.toml"
fi

install -d -m 0755 "$root/usr/share/doc/marrownode/docs"
install -m 0644 "$source_dir/README.md" "$root/usr/share/doc/marrownode/README.md"
install -m 0644 "$source_dir"/docs/*.md "$root/usr/share/doc/marrownode/docs/"
install -d -m 0755 "$root/usr/share/doc/marrownode/docs/images"
install -m 0644 "$source_dir"/docs/images/* "$root/usr/share/doc/marrownode/docs/images/"

install -d -m 0755 "$root/etc/systemd/system"
install -m 0644 "$source_dir/systemd/marrownode.service" "$root/etc/systemd/system/"
if [ -n "$root" ]; then
  # Verified against this machine's own units (targets, sockets) seen from inside the root.
  copied=""
  if [ ! -e "$root/usr/lib/systemd/system" ]; then
    install -d -m 0755 "$root/usr/lib/systemd"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/system"
    copied=1
  fi
  status=0
  systemd-analyze verify --root="$root" marrownode.service || status=$?
  if [ -n "$copied" ]; then rm -rf "$root/usr/lib/systemd"; fi
  [ "$status" -eq 0 ] || exit "$status"
else
  systemd-analyze verify /etc/systemd/system/marrownode.service
  systemctl daemon-reload
fi

echo "installed: $prefix (marrownode $("$root$prefix/bin/python" -m marrownode --version | cut -d' ' -f2))"
echo "next: edit /etc/marrownode/marrownode.toml, check it with"
echo "  marrownode check-config --for-service /etc/marrownode/marrownode.toml"
echo "then: systemctl enable --now marrownode"
