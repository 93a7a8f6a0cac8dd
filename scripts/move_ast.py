#!/usr/bin/env python3
"""Parse Move source with Aptos's tree-sitter grammar (no Move compiler needed).

Install the parser first with scripts/setup-move-tools.sh.

  move_ast.py check FILE...      syntax check; exit 1 with file:line:col per error
  move_ast.py signatures FILE    JSON: entry functions and #[view] functions
  move_ast.py tests FILE         JSON: #[test] functions and expected abort codes
  move_ast.py tree FILE          print the syntax tree (for exploring the grammar)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import sys
import warnings
from typing import Iterator

try:
    import tree_sitter
    import tree_sitter_move
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(f"move_ast: {exc}; run scripts/setup-move-tools.sh first\n")
    sys.exit(2)

Node = tree_sitter.Node


def _language() -> tree_sitter.Language:
    ptr = tree_sitter_move.language()
    if isinstance(ptr, int):
        # tree-sitter-move 0.0.2 returns a raw pointer; py-tree-sitter 0.22..0.25
        # accept it with a DeprecationWarning. Newer releases want a capsule.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return tree_sitter.Language(ptr)
            except TypeError:
                pass
        new_capsule = ctypes.pythonapi.PyCapsule_New
        new_capsule.restype = ctypes.py_object
        new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return tree_sitter.Language(new_capsule(ptr, b"tree_sitter.Language", None))
    return tree_sitter.Language(ptr)


def _parser() -> tree_sitter.Parser:
    lang = _language()
    try:
        return tree_sitter.Parser(lang)
    except TypeError:  # py-tree-sitter < 0.22
        parser = tree_sitter.Parser()
        parser.set_language(lang)
        return parser


def parse_file(path: str) -> tree_sitter.Tree:
    with open(path, "rb") as fh:
        return _parser().parse(fh.read())


def text(node: Node) -> str:
    return node.text.decode("utf-8")


def normalize(src: str) -> str:
    """Type text with whitespace normalized: `vector < u8 >` -> `vector<u8>`, `& mut T` -> `&mut T`."""
    out = " ".join(src.split())
    out = re.sub(r"\s*([<>()\[\]])\s*", r"\1", out)
    out = re.sub(r"\s*::\s*", "::", out)
    out = re.sub(r"&\s+", "&", out)
    out = re.sub(r"\s*,\s*", ", ", out)
    return out.strip()


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


# ---------------------------------------------------------------- check


def syntax_errors(tree: tree_sitter.Tree) -> list[tuple[int, int, str]]:
    errors = []
    for node in walk(tree.root_node):
        if node.is_missing:
            what = f"missing {node.type!r}"
        elif node.type == "ERROR":
            snippet = " ".join(text(node).split())
            if len(snippet) > 40:
                snippet = snippet[:40] + "..."
            what = repr(snippet)
        else:
            continue
        row, col = node.start_point
        errors.append((row + 1, col + 1, what))
    return errors


def cmd_check(files: list[str]) -> int:
    status = 0
    for path in files:
        errors = syntax_errors(parse_file(path))
        if errors:
            status = 1
            for line, col, what in errors:
                print(f"{path}:{line}:{col}: syntax error near {what}")
        else:
            print(f"ok {path}")
    return status


# ---------------------------------------------------------------- declarations


def modules(tree: tree_sitter.Tree) -> Iterator[Node]:
    """Every `module` (not `spec module`), also those inside `address` blocks."""
    for node in walk(tree.root_node):
        if node.type == "module" and node.children and node.children[0].type == "module":
            yield node


def attributes(decl: Node) -> list[Node]:
    """The top-level `attribute` nodes of a declaration's `#[...]` lists."""
    out = []
    for child in decl.children:
        if child.type == "attributes":
            out.extend(c for c in child.children if c.type == "attribute")
    return out


def attribute_name(attr: Node) -> str:
    return "::".join(text(c) for c in attr.children_by_field_name("attr_path"))


def functions(tree: tree_sitter.Tree) -> Iterator[tuple[Node, Node]]:
    """(declaration, function_decl) for every function of every module."""
    for module in modules(tree):
        for decl in module.children:
            if decl.type != "declaration":
                continue
            for child in decl.children:
                if child.type == "function_decl":
                    yield decl, child


def modifiers(decl: Node) -> set[str]:
    found = set()
    for child in decl.children:
        if child.type == "module_member_modifier":
            for token in child.children:
                found.add("public" if token.type == "visibility" else token.type)
    return found


def type_text(node: Node | None) -> str | None:
    return None if node is None else normalize(text(node))


def signature(decl: Node, fun: Node, kind: str) -> dict:
    params = []
    plist = fun.child_by_field_name("parameters")
    for param in plist.children if plist else []:
        if param.type != "parameter":
            continue
        ptype = next((c for c in param.children if c.type == "type"), None)
        params.append(
            {"name": text(param.child_by_field_name("variable")), "type": type_text(ptype)}
        )
    return {
        "name": text(fun.child_by_field_name("name")),
        "kind": kind,
        "params": params,
        "returns": type_text(fun.child_by_field_name("return_type")),
    }


def cmd_signatures(path: str) -> int:
    out = []
    for decl, fun in functions(parse_file(path)):
        attrs = {attribute_name(a) for a in attributes(decl)}
        if "entry" in modifiers(decl):
            out.append(signature(decl, fun, "entry"))
        elif "view" in attrs:
            out.append(signature(decl, fun, "view"))
    print(json.dumps(out, indent=2))
    return 0


def expected_abort(attr: Node) -> str | None:
    for inner in attr.children:
        if inner.type == "attribute" and attribute_name(inner) == "abort_code":
            value = inner.child_by_field_name("value")
            return None if value is None else normalize(text(value))
    return None


def cmd_tests(path: str) -> int:
    out = []
    for decl, fun in functions(parse_file(path)):
        attrs = attributes(decl)
        if not any(attribute_name(a) == "test" for a in attrs):
            continue
        abort = None
        for attr in attrs:
            if attribute_name(attr) == "expected_failure":
                abort = expected_abort(attr)
        out.append({"name": text(fun.child_by_field_name("name")), "expected_abort": abort})
    print(json.dumps(out, indent=2))
    return 0


def cmd_tree(path: str) -> int:
    def show(node: Node, depth: int, field: str | None) -> None:
        label = node.type if node.is_named else repr(node.type)
        leaf = f"  {text(node)!r}" if node.child_count == 0 and node.is_named else ""
        prefix = f"{field}: " if field else ""
        print(f"{'  ' * depth}{prefix}{label}{leaf}")
        for i, child in enumerate(node.children):
            show(child, depth + 1, node.field_name_for_child(i))

    show(parse_file(path).root_node, 0, None)
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="syntax-check Move files").add_argument("files", nargs="+")
    sub.add_parser("signatures", help="entry and view functions as JSON").add_argument("file")
    sub.add_parser("tests", help="test functions as JSON").add_argument("file")
    sub.add_parser("tree", help="print the syntax tree").add_argument("file")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            return cmd_check(args.files)
        if args.cmd == "signatures":
            return cmd_signatures(args.file)
        if args.cmd == "tests":
            return cmd_tests(args.file)
        return cmd_tree(args.file)
    except OSError as exc:
        sys.stderr.write(f"move_ast: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
