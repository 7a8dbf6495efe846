#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs them.
# Debian packages (dcmtk: storescu/storescp/echoscu; orthanc: the real PACS; dicom3tools: dciodvfy;
# chromium and chromium-driver: the headless browser the console tests drive) are installed when
# missing, as root. Python packages come from pyproject.toml's test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in "dcmtk:/usr/bin/storescu" "orthanc:/usr/sbin/Orthanc" "dicom3tools:/usr/bin/dciodvfy" \
            "chromium:/usr/bin/chromium" "chromium-driver:/usr/bin/chromedriver"; do
  [ -x "${pair#*:}" ] || need+=("${pair%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m ruff check marrownode tests benchmarks
python3 -m mypy  # strict on marrownode/ (pyproject.toml)
# No function above complexity C (radon ranks D, E, F fail the build).
complex=$(python3 -m radon cc --min D --no-assert marrownode)
if [ -n "$complex" ]; then echo "functions above complexity C:"; echo "$complex"; exit 1; fi
# Two workers, whole files each (module fixtures run once): most tests wait on sockets,
# Orthanc and subprocesses, so two run side by side in about the time of one.
python3 -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15 "$@"
