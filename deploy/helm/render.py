#!/usr/bin/env python3
"""Renders the edgeswarm Helm chart without `helm`, for CI machines that
cannot install it (no Helm package in Debian, no binary downloads).

Usage: render.py CHART_DIR [-f VALUES.yaml]... [--set-release NAME] > out.yaml

It implements the subset of Go templates (and Helm's functions) that the
chart uses, and nothing more: `{{ }}` with `{{-`/`-}}` trimming, comments,
`if`/`else if`/`else`/`end`, `range` over lists and maps (`$k, $v :=`),
`define`/`include`, variables (`$`, `$name`), pipelines, and the functions
quote, default, toYaml, indent, nindent, b64enc, or, not, eq, required. An
unknown function or syntax is an error, never silently wrong output; when
`helm` is installed, scripts/validate-deploy.sh renders with `helm
template` instead (and this renderer is checked against it there).
Values files merge like Helm's: later files override earlier ones, maps
merge key by key.
"""

import base64
import re
import sys

import yaml

ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class TemplateError(Exception):
    pass


def tokenize(text, name):
    """Text and action tokens, with `{{-`/`-}}` whitespace trimming done."""
    tokens, pos = [], 0
    for m in ACTION.finditer(text):
        tokens.append(["text", text[pos : m.start()]])
        if m.group(1) == "-" and tokens[-1][0] == "text":
            tokens[-1][1] = tokens[-1][1].rstrip()
        tokens.append(["action", m.group(2), m.group(3) == "-", name])
        pos = m.end()
    tokens.append(["text", text[pos:]])
    for i, t in enumerate(tokens):
        if t[0] == "action" and t[2] and i + 1 < len(tokens):
            tokens[i + 1][1] = tokens[i + 1][1].lstrip()
    return [t for t in tokens if not (t[0] == "text" and t[1] == "")]


def parse(tokens, defines, end=("end",)):
    """A list of nodes up to one of `end` (returned with the closing word)."""
    nodes = []
    while tokens:
        t = tokens.pop(0)
        if t[0] == "text":
            nodes.append(("text", t[1]))
            continue
        body = t[1]
        if body.startswith("/*"):
            continue
        word = body.split(None, 1)[0] if body else ""
        rest = body[len(word) :].strip()
        if word in end or (word == "else" and "else" in end):
            return nodes, body
        if word == "if":
            nodes.append(parse_if(rest, tokens, defines))
        elif word == "range":
            inner, closing = parse(tokens, defines, ("end",))
            m = re.match(r"^(\$\w+)\s*,\s*(\$\w+)\s*:=\s*(.*)$", rest)
            m1 = re.match(r"^(\$\w+)\s*:=\s*(.*)$", rest)
            if m:
                nodes.append(("range", m.group(3), m.group(1), m.group(2), inner))
            elif m1:
                nodes.append(("range", m1.group(2), None, m1.group(1), inner))
            else:
                nodes.append(("range", rest, None, None, inner))
        elif word == "define":
            inner, _ = parse(tokens, defines, ("end",))
            defines[parse_string(rest)] = inner
        elif word in ("end", "else"):
            raise TemplateError(f"{t[3]}: unexpected {{{{ {body} }}}}")
        else:
            nodes.append(("expr", body))
    if end != ("$eof",):
        raise TemplateError(f"missing {{{{ end }}}} (wanted {end})")
    return nodes, None


def parse_if(cond, tokens, defines):
    then, closing = parse(tokens, defines, ("end", "else"))
    other = []
    if closing.startswith("else"):
        rest = closing[4:].strip()
        if rest.startswith("if "):
            other = [parse_if(rest[3:].strip(), tokens, defines)]
        else:
            other, _ = parse(tokens, defines, ("end",))
    return ("if", cond, then, other)


def parse_string(s):
    s = s.strip()
    if not (s.startswith('"') and s.endswith('"')):
        raise TemplateError(f"expected a string, got {s!r}")
    return s[1:-1].encode().decode("unicode_escape")


def split_args(s):
    return re.findall(r'"(?:[^"\\]|\\.)*"|\([^)]*\)|\S+', s)


def truthy(v):
    return v not in (None, False, 0, "", [], {})


class Renderer:
    def __init__(self, defines, root):
        self.defines = defines
        self.root = root

    def lookup(self, path, dot, scope):
        if path == ".":
            return dot
        if path.startswith("$"):
            name, _, rest = path.partition(".")
            base = self.root if name == "$" else scope[name]
            keys = rest.split(".") if rest else []
        elif path.startswith("."):
            base, keys = dot, path[1:].split(".")
        else:
            raise TemplateError(f"not a value: {path}")
        for k in keys:
            if base is None:
                return None
            if not isinstance(base, dict):
                raise TemplateError(f"{path}: {k} of a non-map")
            base = base.get(k)
        return base

    def operand(self, arg, dot, scope):
        if arg.startswith('"'):
            return parse_string(arg)
        if re.fullmatch(r"-?\d+", arg):
            return int(arg)
        if arg in ("true", "false"):
            return arg == "true"
        if arg.startswith("("):
            return self.pipeline(arg[1:-1], dot, scope)
        return self.lookup(arg, dot, scope)

    def call(self, fn, args, dot, scope):
        vals = [self.operand(a, dot, scope) if isinstance(a, str) else a[0] for a in args]
        if fn == "quote":
            return '"' + str(vals[0] if vals[0] is not None else "").replace("\\", "\\\\").replace('"', '\\"') + '"'
        if fn == "default":
            return vals[1] if truthy(vals[1]) else vals[0]
        if fn == "toYaml":
            if vals[0] in (None, {}, []):
                return "{}" if isinstance(vals[0], dict) else ("[]" if vals[0] == [] else "null")
            return yaml.safe_dump(vals[0], default_flow_style=False, sort_keys=True).rstrip("\n")
        if fn == "indent":
            pad = " " * vals[0]
            return "\n".join(pad + line for line in str(vals[1]).split("\n"))
        if fn == "nindent":
            pad = " " * vals[0]
            return "\n" + "\n".join(pad + line for line in str(vals[1]).split("\n"))
        if fn == "b64enc":
            return base64.b64encode(str(vals[0]).encode()).decode()
        if fn == "or":
            return next((v for v in vals if truthy(v)), vals[-1])
        if fn == "not":
            return not truthy(vals[0])
        if fn == "eq":
            return vals[0] == vals[1]
        if fn == "required":
            if not truthy(vals[1]):
                raise TemplateError(vals[0])
            return vals[1]
        if fn == "include":
            return self.render(self.defines[vals[0]], vals[1], {})
        raise TemplateError(f"unknown function {fn}")

    def pipeline(self, text, dot, scope):
        value, first = None, True
        for part in [p.strip() for p in re.split(r"\|(?![^(]*\))", text)]:
            words = split_args(part)
            fn, args = words[0], words[1:]
            if not first:
                args = args + [(value,)]
            if fn[0] in '.$"(' or re.fullmatch(r"-?\d+|true|false", fn):
                if args:
                    raise TemplateError(f"cannot call {fn}")
                value = self.operand(fn, dot, scope)
            else:
                value = self.call(fn, args, dot, scope)
            first = False
        return value

    def render(self, nodes, dot, scope):
        out = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "expr":
                v = self.pipeline(node[1], dot, scope)
                out.append("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
            elif kind == "if":
                branch = node[2] if truthy(self.pipeline(node[1], dot, scope)) else node[3]
                out.append(self.render(branch, dot, scope))
            elif kind == "range":
                _, expr, kvar, vvar, inner = node
                coll = self.pipeline(expr, dot, scope) or []
                items = sorted(coll.items()) if isinstance(coll, dict) else list(enumerate(coll))
                for k, v in items:
                    sub = dict(scope)
                    if kvar:
                        sub[kvar] = k
                    if vvar:
                        sub[vvar] = v
                    out.append(self.render(inner, v, sub))
        return "".join(out)


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def main(argv):
    import argparse
    import os

    ap = argparse.ArgumentParser()
    ap.add_argument("chart")
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--release", default="edgeswarm")
    ap.add_argument("--namespace", default="edgeswarm")
    a = ap.parse_args(argv)
    with open(os.path.join(a.chart, "Chart.yaml")) as f:
        chart = yaml.safe_load(f)
    with open(os.path.join(a.chart, "values.yaml")) as f:
        values = yaml.safe_load(f) or {}
    for path in a.values:
        with open(path) as f:
            merge(values, yaml.safe_load(f) or {})
    root = {
        "Values": values,
        "Release": {"Name": a.release, "Namespace": a.namespace, "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart.get("appVersion", "")},
    }
    tdir = os.path.join(a.chart, "templates")
    defines, parsed = {}, []
    for name in sorted(os.listdir(tdir)):
        with open(os.path.join(tdir, name)) as f:
            nodes, _ = parse(tokenize(f.read(), name), defines, ("$eof",))
        if name.endswith((".yaml", ".yml")):
            parsed.append((name, nodes))
    r = Renderer(defines, root)
    for name, nodes in parsed:
        text = r.render(nodes, root, {}).strip()
        if text:
            print(f"---\n# Source: {chart['name']}/templates/{name}\n{text}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except TemplateError as e:
        sys.exit(f"render.py: {e}")
