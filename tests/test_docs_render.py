"""The tables of README.md and docs/*.md are the rendering of their JSON (scripts/render_docs.py)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import render_docs  # noqa: E402


def test_committed_tables_match_their_json():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "render_docs.py"),
                           "--check"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_every_registered_table_is_placed_and_renders():
    text = "".join(open(os.path.join(ROOT, d)).read() for d in render_docs.DOCUMENTS
                   if os.path.exists(os.path.join(ROOT, d)))
    for name in render_docs.TABLES:
        assert f"<!-- table:{name} -->" in text, f"table {name} is registered but not placed"
        assert render_docs.render(name).strip()


def test_a_changed_number_is_detected():
    text = "a\n<!-- table:analytic_cpu -->\n| stale |\n<!-- /table:analytic_cpu -->\nb\n"
    new, names = render_docs.rendered(text)
    assert names == ["analytic_cpu"] and new != text
    assert render_docs.rendered(new)[0] == new  # rendering is a fixed point
