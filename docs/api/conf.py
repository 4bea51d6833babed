"""Sphinx configuration of torch_ntk's API reference (built by scripts/build_docs.sh).

The pages are generated from the docstrings (autodoc; Google-style sections by napoleon).
Built with ``-W -n``: every warning, and every cross-reference that does not resolve, is
an error. No intersphinx (CI has no network beyond PyPI): references to torch, numpy and
the standard library are listed in ``nitpick_ignore_regex`` below instead of linked.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

project = "torch_ntk"
author = "torch_ntk developers"
copyright = "torch_ntk developers"

import torch_ntk  # noqa: E402  (after sys.path: the package, with its built extension)

release = version = torch_ntk.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list = []

autodoc_member_order = "bysource"
autodoc_typehints = "none"           # the docstrings state types and shapes in words
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

nitpicky = True
# Outside this package: no intersphinx inventories offline, so these names stay plain text.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|typing|collections|os|pathlib|contextlib)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|nn\.Module|Optimizer|Callable|Any|Optional|Union|Sequence|"
               r"Mapping|Iterator|Iterable|NamedTuple|PathLike|dtype|device)"),
    (r"py:.*", r"(int|float|str|bool|None|tuple|list|dict|object|Exception|ValueError|"
               r"TypeError|RuntimeError|UserWarning|Warning)"),
    # "Raises:" sections are prose ("ValueError for NaN/Inf, ..."), which napoleon turns
    # into exception references: the exceptions are builtins, nothing to link.
    (r"py:exc", r".*"),
]
nitpick_ignore = [
    # Not part of the reference (an internal helper of torch_ntk.analytic.kernels).
    ("py:func", "torch_ntk.analytic.compiled_op_args"),
    # napoleon reads a property docstring "The factor ...: σ_w/√n_in" as "type: text".
    ("py:class", "The factor applied to W in forward"),
    ("py:class", "The factor applied to b in forward"),
    # Stale since the layout change (issue 25): the module is torch_ntk.lifting.fx now.
    ("py:mod", "torch_ntk.lifting.fx"),
]


# The docstrings are written for help() as plain text: "name: description" lines whose
# continuation is indented, |x| for absolute values, [M, *shape] in prose. Made valid
# reStructuredText here, after napoleon (priority 600 > its 500), without changing words:
# a continuation line directly under a less indented line (no blank line between, outside
# literal blocks) is joined to it; "|" and a lone "*" outside inline literals are escaped.
def _plain_text_to_rst(app, what, name, obj, options, lines):
    out: list[str] = []
    literal_indent = None  # indentation of the line that opened a literal block ("::")
    opens_literal = False
    for line in lines:
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if literal_indent is not None:
            if stripped and indent <= literal_indent:
                literal_indent = None
            else:
                out.append(line)
                continue
        if opens_literal and not stripped:
            literal_indent = opening_indent
            opens_literal = False
            out.append(line)
            continue
        opens_literal = False
        previous = out[-1] if out else ""
        prev_indent = len(previous) - len(previous.lstrip())
        joinable = (previous.strip() and stripped and indent > prev_indent
                    and not previous.rstrip().endswith("::")
                    and not stripped.startswith((":", ".. ", "- ", "* ", ">>>"))
                    and not previous.lstrip().startswith((".. ", ":param", ":returns",
                                                          ":raises", ":type", ":rtype")))
        text = _escape(stripped if joinable else line)
        if joinable:
            out[-1] = out[-1].rstrip() + " " + text
        else:
            out.append(text)
        if stripped.endswith("::"):
            opens_literal, opening_indent = True, indent
    lines[:] = out


def _escape(text: str) -> str:
    parts = text.split("``")
    for i in range(0, len(parts), 2):  # outside ``inline literals``
        part = parts[i].replace("|", "\\|")
        if part.count("*") % 2 == 1:
            part = re.sub(r"(?<=[\[(, ])\*(?=\w)", r"\\*", part)
        parts[i] = part
    return "``".join(parts)


# The docstrings name objects by their public names (torch_ntk.NTK, lift, random_network),
# by their defining modules (torch_ntk.tracking.records.DriftRecord), or by the deprecated
# shims' names (torch_ntk.arch.lift, which still imports). A reference that does not
# resolve as written resolves to the one documented object with the same last name; an
# ambiguous or undocumented name stays unresolved (an error under -n).
def _resolve_by_last_name(app, env, node, contnode):
    from sphinx.util.nodes import make_refnode

    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not (target.startswith("torch_ntk.") or "." not in target):
        return None
    last = target.rsplit(".", 1)[-1]
    objects = env.get_domain("py").objects
    found = {(e.docname, e.node_id): name for name, e in objects.items()
             if name.rsplit(".", 1)[-1] == last and name.startswith("torch_ntk")}
    if len(found) != 1:
        return None
    (docname, node_id), name = next(iter(found.items()))
    return make_refnode(app.builder, node["refdoc"], docname, node_id, contnode, name)


def setup(app):
    app.connect("autodoc-process-docstring", _plain_text_to_rst, priority=600)
    app.connect("missing-reference", _resolve_by_last_name)
