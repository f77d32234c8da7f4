#!/usr/bin/env python3
"""Fails when docs/PROTOCOL.md's tables of reasons and the sources disagree: "### Reasons" against
moatd's, "### Reasons the clients set" against libmoat's and the CLI's (src/client).

A reason is a snake_case string literal passed as the `reason` argument that follows a
`moat_code` one (moat_status_set, moat_rpc_call_fail and the modules' own wrappers, found by
their parameter lists), or written with snprintf into a status's reason. moatd's sources are
src/server, src/rpc, src/grpc, src/bridge, src/runtime, src/common and src/wire.
"""
import argparse
import pathlib
import re
import sys

MOATD_DIRS = ["server", "rpc", "grpc", "bridge", "runtime", "common", "wire"]
CLIENT_DIRS = ["client", "client/cli"]
FUNCTION = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\(([^;{}()]*)\)\s*(?:__attribute__\s*\(\(.*?\)\)\s*)?[;{]",
                      re.S)
CALL = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\(")
SNPRINTF_REASON = re.compile(
    r"\bsnprintf\s*\(\s*(?:st|status)\s*(?:->|\.)\s*reason\s*,\s*sizeof\s*\([^)]*\)\s*,\s*\"([a-z][a-z0-9_]*)\"")
LITERAL = re.compile(r"\"([a-z][a-z0-9_]*)\"")


def blank_comments(text):
    """Comments become spaces (newlines kept), so line numbers stay right."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text,
                  flags=re.S)


def arguments(text, start):
    """The top-level arguments of the call whose '(' ends just before start."""
    args, cur, depth, i = [], [], 0, start
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            j = i + 1
            while text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            cur.append(text[i:j + 1])
            i = j + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                args.append("".join(cur))
                return args
            depth -= 1
        elif ch == "," and depth == 0:
            args.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(ch)
        i += 1
    return args


def reason_parameters(texts):
    """Function name -> index of its `const char *reason` parameter, for functions where it
    follows a `moat_code` one (a status's reason, not an end or error text of another kind)."""
    found = {}
    for text in texts:
        for m in FUNCTION.finditer(text):
            params = [p.strip() for p in m.group(2).split(",")]
            for i, p in enumerate(params[1:], 1):
                if re.fullmatch(r"const\s+char\s*\*\s*reason", p) and \
                        re.match(r"moat_code\b", params[i - 1]):
                    found[m.group(1)] = i
    return found


def source_reasons(root, dirs):
    files = sorted(f for d in dirs for f in (root / "src" / d).glob("*.c"))
    texts = {f: blank_comments(f.read_text()) for f in files}
    headers = [blank_comments(h.read_text()) for h in (root / "include" / "moat").glob("*.h")]
    takes_reason = reason_parameters(list(texts.values()) + headers)
    reasons = {}
    for f, text in texts.items():
        where = lambda pos: f"{f.relative_to(root)}:{text.count(chr(10), 0, pos) + 1}"
        for m in CALL.finditer(text):
            index = takes_reason.get(m.group(1))
            if index is None:
                continue
            args = arguments(text, m.end())
            if len(args) <= index:
                continue
            for literal in LITERAL.findall(args[index]):
                reasons.setdefault(literal, where(m.start()))
        for m in SNPRINTF_REASON.finditer(text):
            reasons.setdefault(m.group(1), where(m.start()))
    return reasons


def documented_reasons(protocol, heading):
    """The reasons in the first column of the table under heading; a cell may name several."""
    reasons, inside = set(), False
    for line in protocol.read_text().splitlines():
        if line.startswith("#"):
            inside = line.strip() == heading
            continue
        m = re.match(r"\|([^|]*)\|", line)
        if inside and m:
            reasons.update(re.findall(r"`([a-z0-9_]+)`", m.group(1)))
    return reasons


def compare(in_code, in_docs, heading):
    """Prints each disagreement; returns how many there were."""
    if not in_code or not in_docs:
        print(f"check_reasons: found no reasons for '{heading}' (sources or table moved?)",
              file=sys.stderr)
        return 1
    missing = sorted(set(in_code) - in_docs)
    stale = sorted(in_docs - set(in_code))
    for r in missing:
        print(f"{in_code[r]}: reason '{r}' is not in docs/PROTOCOL.md's '{heading}'",
              file=sys.stderr)
    for r in stale:
        print(f"docs/PROTOCOL.md: reason '{r}' is in '{heading}' but no source sets it",
              file=sys.stderr)
    return len(missing) + len(stale)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source-dir", required=True, type=pathlib.Path)
    root = ap.parse_args().source_dir.resolve()
    protocol = root / "docs" / "PROTOCOL.md"
    server = source_reasons(root, MOATD_DIRS)
    client = source_reasons(root, CLIENT_DIRS)
    wrong = compare(server, documented_reasons(protocol, "### Reasons"), "### Reasons")
    wrong += compare(client, documented_reasons(protocol, "### Reasons the clients set"),
                     "### Reasons the clients set")
    if wrong:
        return 1
    print(f"check_reasons: {len(server)} server and {len(client)} client reasons, all in "
          "docs/PROTOCOL.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
