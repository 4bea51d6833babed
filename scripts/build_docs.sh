#!/usr/bin/env bash
# Build the API reference (docs/api: Sphinx autodoc + napoleon, from the docstrings) into
# docs/api/_build/html (git-ignored). Warnings are errors and every cross-reference must
# resolve (-W -n); nothing is fetched from the network (no intersphinx, no external links).
# Installs sphinx into .venv when missing (after scripts/setup_env.sh); PYTHON=... to use
# another interpreter that has torch_ntk importable. Called by .ci/run after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -c "import sphinx" 2>/dev/null; then
  echo "build_docs: installing sphinx into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install -q --disable-pip-version-check "sphinx>=7"
fi
out=docs/api/_build/html
rm -rf "$out"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m sphinx -W -n --keep-going -q -b html \
  docs/api "$out"
echo "build_docs: OK, $out/index.html"
