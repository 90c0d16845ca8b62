"""A small mutation run: how many deliberately broken copies of kit's code the test suite notices.

Each mutant changes one operator or constant in one module (a comparison flipped, `+` made `-`, `and`
made `or`, a number shifted, a `not` dropped); a sample of them, drawn with a fixed seed, is applied one
at a time to a copy of the repository, and the tests run against it. A mutant is *killed* when the tests
fail (or time out), *survives* when they pass. The share killed is the mutation score.

    python tools/mutants.py --repo . --modules 'kit/inference/*.py' kit/ensemble/selection.py \
        --sample 40 --seed 0 --out outputs/mutants.csv -- -m "not slow" -x -q

Everything after `--` goes to pytest. Run it on a quiet machine: each surviving mutant costs a whole
test run. mutmut does the same with more operators; this script exists because mutmut's runner rewrites
the package in place, which the shared checkout here cannot afford.
"""

from __future__ import annotations

import argparse
import ast
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_SWAPS: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.And: ast.Or,
    ast.Or: ast.And,
}


@dataclass(frozen=True)
class Mutant:
    """One change: in `path`, the node at (line, col) of `kind` becomes `description`."""

    path: str
    line: int
    col: int
    kind: str
    description: str


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                lines.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    return lines


def find_mutants(path: Path, root: Path) -> list[Mutant]:
    """Every mutation point of one module (operators, numbers, `not`), docstrings and annotations aside."""
    tree = ast.parse(path.read_text())
    skip = _docstring_lines(tree)
    annotations = {
        id(n)
        for node in ast.walk(tree)
        for attr in ("annotation", "returns")
        if (a := getattr(node, attr, None)) is not None
        for n in ast.walk(a)
    }
    rel = str(path.relative_to(root))
    out = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)
        if line is None or line in skip or id(node) in annotations:
            continue
        col = node.col_offset
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _SWAPS:
                    out.append(
                        Mutant(
                            rel, line, col, f"compare{i}", f"{type(op).__name__}->{_SWAPS[type(op)].__name__}"
                        )
                    )
        elif isinstance(node, ast.BinOp) and type(node.op) in _SWAPS:
            out.append(
                Mutant(rel, line, col, "binop", f"{type(node.op).__name__}->{_SWAPS[type(node.op)].__name__}")
            )
        elif isinstance(node, ast.BoolOp) and type(node.op) in _SWAPS:
            out.append(
                Mutant(
                    rel, line, col, "boolop", f"{type(node.op).__name__}->{_SWAPS[type(node.op)].__name__}"
                )
            )
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append(Mutant(rel, line, col, "not", "drop not"))
        elif (
            isinstance(node, ast.Constant)
            and type(node.value) in (int, float)
            and not isinstance(node.value, bool)
        ):
            out.append(Mutant(rel, line, col, "number", f"{node.value!r}->{_shifted(node.value)!r}"))
    return out


def _shifted(value: float) -> float:
    if isinstance(value, int):
        return value + 1
    return value * 1.5 if value else 1.0


class _Apply(ast.NodeTransformer):
    def __init__(self, mutant: Mutant) -> None:
        self.m = mutant

    def _here(self, node: ast.AST) -> bool:
        return (
            getattr(node, "lineno", None) == self.m.line and getattr(node, "col_offset", None) == self.m.col
        )

    def generic_visit(self, node: ast.AST) -> ast.AST:
        node = super().generic_visit(node)
        if not self._here(node):
            return node
        kind = self.m.kind
        if kind.startswith("compare") and isinstance(node, ast.Compare):
            i = int(kind.removeprefix("compare"))
            node.ops[i] = _SWAPS[type(node.ops[i])]()
        elif (kind == "binop" and isinstance(node, ast.BinOp)) or (
            kind == "boolop" and isinstance(node, ast.BoolOp)
        ):
            node.op = _SWAPS[type(node.op)]()
        elif kind == "not" and isinstance(node, ast.UnaryOp):
            return node.operand
        elif kind == "number" and isinstance(node, ast.Constant):
            node.value = _shifted(node.value)
        return node


def apply(mutant: Mutant, root: Path) -> None:
    """Rewrite the mutant's module under `root` with the change applied."""
    path = root / mutant.path
    tree = _Apply(mutant).visit(ast.parse(path.read_text()))
    path.write_text(ast.unparse(ast.fix_missing_locations(tree)))


def _outputs_of(repo: Path):
    """A copytree filter: the repository's own outputs and environments (top level only: kit/data is
    code) and caches are not copied."""
    top = {".venv", "mlruns", "data", "outputs", ".git", "submissions"}
    return lambda folder, names: [
        n for n in names if n == "__pycache__" or (Path(folder) == repo and n in top)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--modules", nargs="+", required=True, help="globs relative to --repo")
    parser.add_argument("--sample", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    repo = args.repo.resolve()
    files = sorted({p for g in args.modules for p in repo.glob(g) if p.name != "__init__.py"})
    points = [m for f in files for m in find_mutants(f, repo)]
    sample = random.Random(args.seed).sample(points, min(args.sample, len(points)))
    pytest_args = [a for a in args.pytest_args if a != "--"]
    print(f"{len(points)} mutation points in {len(files)} modules; running {len(sample)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kit-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(repo, copy, ignore=_outputs_of(repo))
        env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
        for k, mutant in enumerate(sample, 1):
            original = (copy / mutant.path).read_text()
            apply(mutant, copy)
            started = time.monotonic()
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *pytest_args],
                    cwd=copy,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                )
                status = "survived" if done.returncode == 0 else "killed"
                failed = next((line for line in done.stdout.splitlines() if line.startswith("FAILED")), "")
            except subprocess.TimeoutExpired:
                status, failed = "killed", "timeout"
            (copy / mutant.path).write_text(original)
            rows.append(
                {
                    **mutant.__dict__,
                    "status": status,
                    "seconds": round(time.monotonic() - started),
                    "by": failed[:200],
                }
            )
            print(
                f"[{k}/{len(sample)}] {status:8s} {mutant.path}:{mutant.line} {mutant.description}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    killed = sum(r["status"] == "killed" for r in rows)
    print(f"mutation score: {killed}/{len(rows)} killed ({killed / len(rows):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
