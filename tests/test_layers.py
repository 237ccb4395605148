"""Dependencies point one way: the shared package <- the stages (never each other) <- the app."""

import ast
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rvos

STAGES = ("stage1_referdino", "stage2_sam2_refine", "stage3_fusion")
APP = "referdino_plus"


def imported_after(statement: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``statement`` in a fresh interpreter."""
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_shared_package_imports_no_stage_and_no_application():
    modules = sorted(f"rvos.{m.name}" for m in pkgutil.iter_modules(rvos.__path__))
    assert "rvos.mevis" in modules and "rvos.workers" in modules
    loaded = imported_after("\n".join(f"import {m}" for m in modules))
    assert not loaded & {*STAGES, APP}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "forbidden"),
    [
        ("stage1_referdino", {"stage2_sam2_refine", "stage3_fusion", APP, "sam2"}),
        ("stage2_sam2_refine", {"stage1_referdino", "stage3_fusion", APP, "transformers"}),
        ("stage3_fusion", {"stage1_referdino", "stage2_sam2_refine", APP, "torch"}),
    ],
)
def test_a_stage_imports_no_other_stage(stage, forbidden):
    modules = [stage, f"{stage}.runner", f"{stage}.options"]
    if stage == "stage3_fusion":
        modules.append("stage3_fusion.evaluate")
    loaded = imported_after(f"import {', '.join(modules)}")
    assert stage in loaded
    assert not loaded & forbidden, f"{stage} pulls in {sorted(loaded & forbidden)}"


@pytest.mark.slow
def test_archive_workers_load_no_model_code():
    """The archive writer's processes import the mask loader by name: it must stay light."""
    loaded = imported_after("import referdino_plus.archives")
    assert not loaded & {*STAGES, "torch", "transformers", "sam2"}


def test_only_the_app_page_imports_gradio():
    """Gradio is an optional extra (``pip install .[app]``): one module of the app uses it."""
    root = Path(rvos.__file__).resolve().parents[1]
    users = sorted(
        path.relative_to(root).as_posix()
        for package in (*STAGES, "rvos", APP)
        for path in (root / package).rglob("*.py")
        if re.search(r"^\s*(import|from)\s+gradio\b", path.read_text(), re.MULTILINE)
    )
    assert users == ["referdino_plus/app_page.py"]


@pytest.mark.slow
def test_command_line_and_app_jobs_load_no_gradio():
    loaded = imported_after(
        "import referdino_plus.cli, referdino_plus.pipeline, referdino_plus.demo, "
        "referdino_plus.app"
    )
    assert "gradio" not in loaded


def test_lazy_exports_come_from_their_modules():
    import stage2_sam2_refine
    from stage2_sam2_refine.prompts import select_queries

    assert stage2_sam2_refine.select_queries is select_queries
    assert "select_queries" in stage2_sam2_refine.__all__
    with pytest.raises(AttributeError, match="'stage2_sam2_refine' has no attribute 'nope'"):
        stage2_sam2_refine.nope  # noqa: B018


PACKAGES = ("rvos", *STAGES, APP, "benchmarks")


def imports_of(path: Path, module: str, modules: set[str]) -> set[str]:
    """Our modules that ``module`` (the file ``path``) imports, at any depth of its code
    (imports inside functions count: they close a cycle as surely when they run)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(f"{name}."):
                found.add(name)
    return found


def import_cycles(root: Path) -> list[list[str]]:
    """The groups of our modules that import each other, directly or around a circle
    (strongly connected components of more than one module), each sorted."""
    files = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: imports_of(p, m, set(files)) for m, p in files.items()}
    order, low, stack, cycles = {}, {}, [], []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for other in graph[module]:
            if other not in order:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], order[other])
        if low[module] == order[module]:
            group = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def test_no_module_imports_itself_around_a_circle(tmp_path):
    root = Path(rvos.__file__).resolve().parents[1]
    assert import_cycles(root) == []
    # The check sees a circle through an import inside a function.
    (tmp_path / "rvos").mkdir()
    (tmp_path / "rvos" / "__init__.py").write_text("")
    (tmp_path / "rvos" / "a.py").write_text("from rvos import b\n")
    (tmp_path / "rvos" / "b.py").write_text("def f():\n    from rvos.a import x\n")
    assert import_cycles(tmp_path) == [["rvos.a", "rvos.b"]]
