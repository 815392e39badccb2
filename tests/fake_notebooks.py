"""Tiny stand-in notebooks for tests of code that executes notebooks (selmask_lib.report)."""

import nbformat


def fake_notebook(path, parameters: str, body: str) -> None:
    """A notebook with a tagged ``parameters`` cell (``parameters``) and one code cell (``body``)."""
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [cell, nbformat.v4.new_code_cell(body)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
