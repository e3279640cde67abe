"""The trainer that calls the search session stays thin (an out-of-memory retry keeping the session's state is
tested in test_reliability.py)."""

from __future__ import annotations

import ast
import inspect

import yolo_dms.search.session as session_module
import yolo_dms.search.trainer as trainer_module

HOOKS = {name for name, member in vars(trainer_module.SearchTrainer).items() if inspect.isfunction(member)}


def test_the_trainer_stays_thin():
    """Every method of the trainer and the session fits on a screen (25 lines); search set-up is not hidden in
    build_optimizer."""
    for module in (trainer_module, session_module):
        tree = ast.parse(inspect.getsource(module))
        long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
                if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 25]
        assert not long, (module.__name__, long)
    source = inspect.getsource(trainer_module.SearchTrainer.build_optimizer)
    assert not any(call in source for call in ("self.session", "resource_model(", "StructureStep(", "latency_backend("))
    assert "_setup_train" in HOOKS and "resume_training" not in HOOKS  # the session restores its own state
