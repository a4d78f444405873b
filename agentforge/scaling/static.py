"""The static checks of a candidate file, run before any sandbox: syntax, the framework header, the frame
outside the EVOLVE block, the block's size and the constructs it may not use. A friendly first filter with
a clear reason, not the security boundary (that is the sandbox). Split out of ``evaluator.py``, which
re-exports these names.
"""
from __future__ import annotations

import ast
import re

from agentforge.scaling.failures import CandidateFailure
from agentforge.scaling.variants import FRAMEWORKS, variant_path

BLOCK_START, BLOCK_END = "# EVOLVE-BLOCK-START", "# EVOLVE-BLOCK-END"
HEADER = re.compile(r"^#\s*scaling-framework:\s*([A-Za-z_]\w*)\s*$")
ALLOWED_IMPORTS = ("math", "torch", "agentforge.models.layers")
FORBIDDEN_CALLS = {"eval", "exec", "compile", "open", "__import__", "breakpoint", "input", "globals", "locals",
                   "vars", "exit", "quit"}
# the EVOLVE block's size limit: the shipped blocks hold 519-815 characters; data written into the code
# (a table of n-gram counts, say) would be parameters nobody counts
MAX_BLOCK_CHARS = 8000


# -- static checks ----------------------------------------------------------------------------------------
def split_block(code: str) -> tuple[list[str], list[str], list[str], int]:
    """(lines before the block, block lines, lines after, 1-based line of the START marker)."""
    lines = code.replace("\r\n", "\n").split("\n")
    starts = [i for i, ln in enumerate(lines) if ln.strip() == BLOCK_START]
    ends = [i for i, ln in enumerate(lines) if ln.strip() == BLOCK_END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise CandidateFailure("outside_block", f"the file must hold exactly one '{BLOCK_START}' line followed by "
                                                f"one '{BLOCK_END}' line (found {len(starts)} and {len(ends)})")
    s, e = starts[0], ends[0]
    return lines[:s], lines[s + 1:e], lines[e + 1:], s + 1


def _normalized(lines: list[str]) -> list[str]:
    out = [ln.rstrip() for ln in lines]
    while out and not out[-1]:
        out.pop()
    return out


def detect_framework(code: str) -> str:
    """The framework named by the header line; a missing or unknown header is an edit outside the block."""
    for line in code.splitlines():
        if line.strip():
            m = HEADER.match(line.strip())
            if m and m.group(1) in FRAMEWORKS:
                return m.group(1)
            break
    raise CandidateFailure("outside_block", f"the first line must be the framework header "
                                            f"'# scaling-framework: NAME' with NAME in {list(FRAMEWORKS)}; "
                                            f"it was changed or removed")


def check_outside_block(code: str, framework: str) -> None:
    """Everything outside the EVOLVE block must equal the framework template (trailing spaces aside)."""
    before, _, after, _ = split_block(code)
    t_before, _, t_after, _ = split_block(variant_path(framework).read_text())
    for _where, got, want, offset in (("before", before, t_before, 1), ("after", after, t_after, None)):
        got, want = _normalized(got), _normalized(want)
        if got == want:
            continue
        i = next((j for j in range(min(len(got), len(want))) if got[j] != want[j]), min(len(got), len(want)))
        line = got[i] if i < len(got) else "<end of file>"
        pos = f"line {i + 1}" if offset else f"line {i + 1} after {BLOCK_END}"
        raise CandidateFailure("outside_block", f"code outside the EVOLVE block differs from the {framework} "
                                                f"template ({pos}: {line.strip()[:80]!r}); only the code "
                                                f"between the markers may change")


STATE_DICT_HOOKS = ("_save_to_state_dict", "_load_from_state_dict", "state_dict", "load_state_dict")


def _names_a_state_dict_hook(node) -> bool:
    """A method definition or attribute that changes how a module saves or loads its weights (overriding
    ``_save_to_state_dict`` / ``_load_from_state_dict``, any ``register_*state_dict*`` hook): a red team packed
    parameters into other dtypes that way. A friendly filter, like the rest of this check: the parameter count is
    enforced on the returned bytes (``trust.fp32_equivalent``)."""
    name = node.name if isinstance(node, ast.FunctionDef) else node.attr
    if isinstance(node, ast.FunctionDef):
        return name in STATE_DICT_HOOKS
    return name in STATE_DICT_HOOKS[:2] or ("state_dict" in name and "register" in name)


def check_block_code(tree: ast.AST, first: int, last: int) -> None:
    """Refuse, inside the block (lines first..last), the tools a candidate could use to escape its role."""
    for node in ast.walk(tree):
        lineno = getattr(node, "lineno", None)
        if lineno is None or not first <= lineno <= last:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            bad = [n for n in names if not any(n == ok or n.startswith(ok + ".") for ok in ALLOWED_IMPORTS)]
            if bad or (isinstance(node, ast.ImportFrom) and node.level):
                raise CandidateFailure("forbidden", f"line {lineno}: import of {bad or 'a relative module'}; the "
                                                    f"block may import only {list(ALLOWED_IMPORTS)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            raise CandidateFailure("forbidden", f"line {lineno}: call to {node.func.id}() is not allowed in the block")
        elif isinstance(node, (ast.Attribute, ast.FunctionDef)) and _names_a_state_dict_hook(node):
            raise CandidateFailure("forbidden", f"line {lineno}: {getattr(node, 'attr', None) or node.name} is not "
                                                f"allowed in the block (the weights are saved and loaded as they are)")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr != "__init__":
            raise CandidateFailure("forbidden", f"line {lineno}: access to {node.attr} is not allowed in the block")
        elif isinstance(node, ast.Name) and node.id.startswith("__") and node.id.endswith("__"):
            raise CandidateFailure("forbidden", f"line {lineno}: use of {node.id} is not allowed in the block")


def check_static(code: str) -> str:
    """Syntax, framework, untouched frame, allowed constructs; returns the framework name. A carriage return
    outside a CRLF pair is refused: Python ends a line there, ``split_block`` does not, so 40 of them in a comment
    moved every later line past the block's line range and out of ``check_block_code``'s sight."""
    if "\r" in code.replace("\r\n", "\n"):
        raise CandidateFailure("forbidden", "a carriage return outside a CRLF line ending: use \\n or \\r\\n "
                                            "line endings")
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise CandidateFailure("crash", f"syntax error at line {exc.lineno}: {exc.msg}") from None
    framework = detect_framework(code)
    check_outside_block(code, framework)
    before, block, _, _ = split_block(code)
    size = len("\n".join(block))
    if size > MAX_BLOCK_CHARS:
        raise CandidateFailure("forbidden", f"the EVOLVE block holds {size} characters, more than the "
                                            f"{MAX_BLOCK_CHARS} allowed: keep the attention's code short; tables or "
                                            f"data written into the code would be parameters nobody counts")
    check_block_code(tree, len(before) + 2, len(before) + 1 + len(block))
    return framework
