"""No code that runs on rank zero alone calls a collective: the other ranks would wait for it forever
(two such places hung every 2-process run: ``VideoLogger`` and ``StepSpeed`` read ``trainer.log_dir``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Names whose use synchronises every rank (``log_dir`` is a broadcast in Lightning).
COLLECTIVES = {"log_dir", "broadcast", "barrier", "all_reduce", "all_gather", "reduce", "reduce_boolean_decision",
               "save_checkpoint", "full_tensor", "broadcast_object_list", "all_gather_object"}


def rank_zero_bodies(tree: ast.AST) -> list[ast.AST]:
    """Functions decorated ``rank_zero_only`` and bodies of ``if ... is_global_zero`` / ``global_rank == 0``."""
    bodies: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any("rank_zero_only" in ast.unparse(d) for d in node.decorator_list):
            bodies.append(node)
        elif isinstance(node, ast.If) and any(k in ast.unparse(node.test) for k in ("is_global_zero", "rank == 0")):
            bodies += node.body
    return bodies


def collectives_in(body: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(body):
        called = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        name = node.attr if isinstance(node, ast.Attribute) else node.func.id if called else None
        if name in COLLECTIVES:
            names.append(f"line {node.lineno}: {name}")
    return names


def test_rank_zero_only_code_calls_no_collective():
    found = {}
    for path in [*ROOT.glob("ls_video/**/*.py"), *ROOT.glob("callbacks/*.py"), *ROOT.glob("datamodules/*.py")]:
        hits = [hit for body in rank_zero_bodies(ast.parse(path.read_text())) for hit in collectives_in(body)]
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert not found, found


def test_the_check_finds_the_old_deadlock():
    """The check itself can fail: the old ``StepSpeed.on_train_end`` is flagged."""
    old = '''
@rank_zero_only
def on_train_end(self, trainer, pl_module):
    log_dir = trainer.log_dir or trainer.default_root_dir
'''
    assert collectives_in(rank_zero_bodies(ast.parse(old))[0]) == ["line 4: log_dir"]
