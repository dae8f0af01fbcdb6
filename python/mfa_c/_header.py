"""Reads mfa.h for cffi: the declarations cdef accepts, the integer constants, the *_INIT defaults.

mfa.h is written for C compilers, not for cffi's cdef (which has no preprocessor), so this module does
the little preprocessing the header needs: comments and line continuations go, C++-only branches go,
every directive goes except `#define NAME <integer>` (cdef turns those into constants), and the
MFA_API visibility token goes. The *_INIT macros are read too, so Python's struct defaults are the
header's own and cannot drift from them.
"""

import dataclasses
import re

_DIRECTIVE = re.compile(r"^\s*#\s*(\w+)\s*(.*)$")
_INTEGER_DEFINE = re.compile(r"^(\w+)\s+(-?(?:0[xX][0-9a-fA-F]+|\d+))[uUlL]*$")
_INIT_DEFINE = re.compile(r"^(\w+_INIT)\s+(\{.*\})$")
_HEADER_INIT = re.compile(r"^MFA_HEADER_INIT\(\s*(\w+)\s*,\s*(\w+)\s*\)$")
_API_TOKEN = re.compile(r"\bMFA_API\b")


@dataclasses.dataclass(frozen=True)
class StructInit:
    """What an *_INIT macro sets: the MFA_STRUCT_* type and the values of the fields after the header,
    in declaration order (None where the macro zeroes an array or a pointer)."""

    struct_type: int
    values: tuple


@dataclasses.dataclass(frozen=True)
class Header:
    cdef: str
    constants: dict  # name -> int, every `#define NAME <integer>` plus MFA_VERSION_NUMBER
    struct_inits: dict  # C struct type name -> StructInit


def parse(text):
    """Parses mfa.h's text into a Header."""
    text = _strip_comments(text.replace("\r\n", "\n")).replace("\\\n", " ")  # one line per directive
    declarations, constants, init_bodies = [], {}, {}
    skipping = []  # per open conditional: [mentions __cplusplus, inside a C++-only branch]
    for line in text.splitlines():
        directive = _DIRECTIVE.match(line)
        if directive is None:
            if not any(level[1] for level in skipping):
                declarations.append(_API_TOKEN.sub("", line))
            continue
        keyword, rest = directive.groups()
        rest = rest.strip()
        if keyword in ("if", "ifdef", "ifndef"):
            skipping.append(_opens_cplusplus_branch(keyword, rest))
        elif keyword in ("else", "elif") and skipping[-1][0]:
            skipping[-1][1] = not skipping[-1][1]
        elif keyword == "endif":
            skipping.pop()
        elif keyword == "define" and not any(level[1] for level in skipping):
            _read_define(rest, constants, declarations, init_bodies)
    constants["MFA_VERSION_NUMBER"] = version_number(constants)
    declarations.append(f"#define MFA_VERSION_NUMBER {constants['MFA_VERSION_NUMBER']}")
    struct_inits = dict(_read_init(body, constants) for body in init_bodies.values())
    return Header("\n".join(declarations), constants, struct_inits)


def version_number(constants):
    """MFA_VERSION_NUMBER, computed as mfa.h's macro does (cdef cannot evaluate the expression)."""
    return (constants["MFA_VERSION_MAJOR"] * 10000 + constants["MFA_VERSION_MINOR"] * 100
            + constants["MFA_VERSION_PATCH"])


def _strip_comments(text):
    """Removes C comments, keeping their line breaks so that directives stay on their own lines."""
    text = re.sub(r"/\*.*?\*/", lambda comment: "\n" * comment.group().count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _opens_cplusplus_branch(keyword, condition):
    """[mentions __cplusplus, the first branch is C++-only] for an #if/#ifdef/#ifndef line."""
    if "__cplusplus" not in condition:
        return [False, False]
    negated = keyword == "ifndef" or condition.startswith("!")
    return [True, not negated]


def _read_define(definition, constants, declarations, init_bodies):
    integer = _INTEGER_DEFINE.match(definition)
    if integer:
        name, literal = integer.groups()
        constants[name] = _c_integer(literal)
        declarations.append(f"#define {name} {constants[name]}")
        return
    init = _INIT_DEFINE.match(definition)
    if init:
        init_bodies[init.group(1)] = init.group(2)


def _c_integer(literal):
    digits = literal.lstrip("-")
    if digits[:2].lower() == "0x":
        value = int(digits, 16)
    elif len(digits) > 1 and digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if literal.startswith("-") else value


def _read_init(body, constants):
    """(struct name, StructInit) from an initializer `{MFA_HEADER_INIT(TYPE, STRUCT), v1, v2, ...}`."""
    items = _split_top_level(body.strip()[1:-1])
    header = _HEADER_INIT.match(items[0])
    if header is None:
        raise ValueError(f"mfa.h: an *_INIT macro does not start with MFA_HEADER_INIT: {body}")
    type_name, struct_name = header.groups()
    values = tuple(_initializer_value(item, constants) for item in items[1:])
    return struct_name, StructInit(constants[type_name], values)


def _split_top_level(text):
    """Splits on commas outside parentheses and braces."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "({":
            depth += 1
        elif char in ")}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:index].strip())
            start = index + 1
    items.append(text[start:].strip())
    return items


def _initializer_value(item, constants):
    if item in ("NULL", "{0}"):
        return None  # ffi.new zeroes memory already
    if item in constants:
        return constants[item]
    if re.fullmatch(r"-?\d+\.\d*(?:[eE][-+]?\d+)?[fF]?", item):
        return float(item.rstrip("fF"))
    if re.fullmatch(r"-?(?:0[xX][0-9a-fA-F]+|\d+)[uUlL]*", item):
        return _c_integer(item.rstrip("uUlL"))
    raise ValueError(f"mfa.h: cannot read the initializer value {item!r}")
