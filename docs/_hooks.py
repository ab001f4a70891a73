"""MkDocs hooks of the nnxopt site (``mkdocs.yml``: ``hooks``).

- The gallery: one page per script of ``examples/`` (its docstring, its code
  and, when ``python3 run.py docs`` has executed it into ``build/gallery/``, its
  output and the plots it wrote), plus an index. Nothing generated is committed.
- ``benchmarks.md``: ``BENCHMARKS.md`` of the repository root, its links
  rewritten for the site and its plot copied.
- ``<!-- nnxopt:status-table nnxopt.Status -->`` in a page becomes the table
  of that enum's members, codes and messages, read from the package.
- ``<!-- nnxopt:gallery-image pinn_adam_lbfgs/pinn_convergence.png -->``
  becomes that plot of an executed example (nothing where none was run).
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
#: Where ``docs/_gallery.py`` (run by ``python3 run.py docs``) leaves each
#: example's output: ``build/gallery/<stem>/output.txt`` and its ``*.png``.
GALLERY_OUT = ROOT / "build" / "gallery"
_STATUS_TABLE = re.compile(r"<!-- nnxopt:status-table ([\w.]+) -->")
_GALLERY_IMAGE = re.compile(r"<!-- nnxopt:gallery-image ([\w./-]+) -->")


def _docstring(path: pathlib.Path) -> tuple[str, str]:
    """The first line of a script's docstring (the title) and the rest."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or path.stem
    title, _, body = doc.partition("\n")
    return title.strip().rstrip("."), body.strip()


def _rst_literals(text: str) -> str:
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _source_without_docstring(path: pathlib.Path) -> str:
    """The script's code after its docstring (shown as the page's prose)."""
    text = path.read_text()
    body = ast.parse(text).body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    ):
        text = "\n".join(text.splitlines()[body[0].end_lineno :])
    return text.strip()


def _example_page(path: pathlib.Path, config: Any, files: Files) -> str:
    title, body = _docstring(path)
    out_dir = GALLERY_OUT / path.stem
    parts = [f"# {_rst_literals(title)}", _rst_literals(body), "## Output"]
    output = out_dir / "output.txt"
    if output.exists():
        parts.append(f"```text\n{output.read_text().rstrip()}\n```")
        for png in sorted(out_dir.glob("*.png")):
            uri = f"gallery/{path.stem}/{png.name}"
            files.append(File.generated(config, uri, abs_src_path=str(png)))
            parts.append(f"![{png.stem}]({path.stem}/{png.name})")
    else:
        parts.append(
            '!!! note "Not executed in this build"\n'
            "    `python3 run.py docs` runs every example and shows its output "
            "and plots here."
        )
    parts += [
        "## Source",
        f"`examples/{path.name}`:",
        f"```python\n{_source_without_docstring(path)}\n```",
    ]
    return "\n\n".join(parts) + "\n"


def _gallery(config: Any, files: Files) -> None:
    rows = ["# Gallery", "", "Runnable scripts from `examples/`, each executed by "
            "the test suite (at reduced size) and by `python3 run.py docs`, "
            "whose output and plots appear on its page.", "",
            "| example | what it shows |", "|---|---|"]  # fmt: skip
    for path in sorted(EXAMPLES.glob("*.py")):
        title, _ = _docstring(path)
        content = _example_page(path, config, files)
        files.append(File.generated(config, f"gallery/{path.stem}.md", content=content))
        rows.append(f"| [{path.stem}]({path.stem}.md) | {_rst_literals(title)} |")
    files.append(
        File.generated(config, "gallery/index.md", content="\n".join(rows) + "\n")
    )


def _benchmarks(config: Any, files: Files) -> None:
    text = (ROOT / "BENCHMARKS.md").read_text()
    # Links relative to the repository root, made relative to the site's root.
    text = re.sub(r"\]\(docs/", "](", text)
    for match in sorted(set(re.findall(r"\]\((benchmarks/[^)\s]+)\)", text))):
        target = ROOT / match
        if target.suffix in {".png", ".svg"} and target.exists():
            files.append(File(match, str(ROOT), config.site_dir, False))
        else:  # a file of the repository that is not part of the site
            text = re.sub(
                rf"\[([^\]]*)\]\({re.escape(match)}\)",
                rf"\1 (`{match}` in the repository)",
                text,
            )
    files.append(File.generated(config, "benchmarks.md", content=text))


def on_config(config: Any) -> Any:
    """Expand the nav's ``Gallery`` entry into the index and one page a script."""
    pages: list[Any] = [{"Overview": "gallery/index.md"}]
    for path in sorted(EXAMPLES.glob("*.py")):
        # The title up to its first qualifier: "Logistic regression with ...".
        short = re.split(r":|,|;| with | through ", _docstring(path)[0])[0]
        pages.append({_rst_literals(short): f"gallery/{path.stem}.md"})
    for i, item in enumerate(config.nav or []):
        if isinstance(item, dict) and "Gallery" in item:
            config.nav[i] = {"Gallery": pages}
    return config


def on_files(files: Files, config: Any) -> Files:
    _gallery(config, files)
    _benchmarks(config, files)
    return files


def _status_table(dotted: str) -> str:
    module, _, name = dotted.rpartition(".")
    enum = getattr(importlib.import_module(module), name)
    rows = ["| member | code | success | message |", "|---|---|---|---|"]
    for member in enum:
        ok = "yes" if member.success else "no"
        rows.append(f"| `{member.name}` | {int(member)} | {ok} | {member.message} |")
    return "\n".join(rows)


def _gallery_image(uri: str, page: Any) -> str:
    """An image an example wrote, where ``run.py docs`` has executed it."""
    if not (GALLERY_OUT / uri).exists():
        return ""
    depth = page.file.src_uri.count("/")
    return f"![{pathlib.Path(uri).stem}]({'../' * depth}gallery/{uri})"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    markdown = _STATUS_TABLE.sub(lambda m: _status_table(m.group(1)), markdown)
    return _GALLERY_IMAGE.sub(lambda m: _gallery_image(m.group(1), page), markdown)
