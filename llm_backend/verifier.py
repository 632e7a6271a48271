r"""A tokenizer-free verifier of the equations a response to a chain problem writes
(:mod:`llm_backend.chain`): plain text in, the first wrong number out. Imports neither torch nor
transformers, so offline tools and tests can use it alone.

The verifier (:func:`verify_chain`) reads the equations ``lhs = rhs`` a response writes and finds
the first wrong number:

1. an operand of ``lhs`` that is neither a number of the question nor the result of an earlier
   correct equation (a mis-copied or invented value): the wrong number is that operand;
2. an equation whose ``rhs`` is not the value of ``lhs`` (an arithmetic error): the wrong number is
   ``rhs``. ``lhs`` counts as right when either standard precedence or left-to-right evaluation
   gives ``rhs`` (a restated question that drops its parentheses is not an arithmetic error);
3. when every equation is right but the final ``\boxed{}`` answer is a wrong number: that number.

The row's ``failure_step`` is the index of the response token holding the wrong number's first
character, ``doomed`` is "the final answer is not the gold answer" (no box counts as wrong), and a
row is **checkable** when it wrote at least one equation and its verdict is consistent (a located
error, or a right answer). A doomed row whose error cannot be located (right arithmetic throughout,
then no box) is not checkable; diagnostics leave such rows out.

Text normalisation keeps a map back to the original characters: ``\times``, ``\cdot``, ``×``, ``·``,
``x`` between numbers -> ``*``; ``−``, ``–`` -> ``-``; ``÷``, ``\div`` -> ``/``; ``$``, ``\(``,
``\)``, ``\[``, ``\]``, ``\left``, ``\right`` dropped; ``{,}`` and ``\,`` between digit groups -> ``,``;
numbers may use thousands separators (``1,234``). Equations chained as ``a + b = c - d = e`` count as
``a + b = c`` and ``c - d = e``. An ``lhs`` without an operator (``x = 5``, ``56 = 56``) is not an
equation.

**Prefix mode** (``prefix=True``, used while decoding): a number touching the end of the text may
still grow (``1`` -> ``17``), so it is not judged yet, and the final answer is not judged at all.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from llm_backend.rewards import extract_boxed, parse_plain_integer

__all__ = ["ChainCheck", "Equation", "char_offsets", "find_equations", "normalize", "token_of_char", "verify_chain"]


# ---------------------------------------------------------------------------------------------
# normalisation with a character map

# (pattern, replacement) applied left to right in one scan; the replacement's characters all map to
# the first original character of the match.
_REPLACE = [
    (r"\\times|\\cdot|×|·|∗", "*"),
    (r"(?<=\d)\s*[xX]\s*(?=\d)", " * "),
    (r"−|–|—", "-"),
    (r"\\div|÷", "/"),
    (r"\\left|\\right|\\\(|\\\)|\\\[|\\\]|\$", ""),
    (r"(?<=\d)(?:\{,\}|\\,)(?=\d{3})", ","),
    (r"\\!|\\;|\\quad", " "),
]
_SCAN = re.compile("|".join(f"({p})" for p, _ in _REPLACE))


def normalize(text: str) -> tuple[str, list[int]]:
    r"""``(normalised text, index map)``: ``map[i]`` is the original index of normalised character ``i``.

    >>> normalize(r"$3 \times 4 = 12$")[0]
    '3 * 4 = 12'
    """
    out: list[str] = []
    where: list[int] = []
    pos = 0
    for m in _SCAN.finditer(text):
        for j in range(pos, m.start()):
            out.append(text[j])
            where.append(j)
        rep = _REPLACE[m.lastindex - 1][1]
        out.extend(rep)
        where.extend([m.start()] * len(rep))
        pos = m.end()
    for j in range(pos, len(text)):
        out.append(text[j])
        where.append(j)
    return "".join(out), where


# ---------------------------------------------------------------------------------------------
# equations

_NUM = r"\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_RHS = re.compile(rf"\s*(-?)\s*({_NUM})")
_LHS_CHARS = set("0123456789+-*/(). ,")


@dataclass(frozen=True)
class Equation:
    """One equation ``lhs = rhs`` as written (positions are in the original text)."""

    lhs: str
    rhs: Fraction
    rhs_start: int
    """Original index of the result's first character."""
    operands: tuple[tuple[Fraction, int], ...]
    """Each number of ``lhs`` with the original index of its first character."""
    value: Fraction | None
    """``lhs`` under standard precedence (None: not evaluable, e.g. a division by zero)."""
    value_ltr: Fraction | None
    """``lhs`` evaluated left to right, ignoring precedence."""
    rhs_values: tuple[Fraction, ...] = ()
    """When the right side is an expression (``a + b = c + d = e``): its values (both evaluations)."""

    @property
    def correct(self) -> bool:
        """The first number of the right side is the value of ``lhs`` (a running computation,
        ``12 + 5 = 17 - 3 = 14``), or the right side is an expression of the same value."""
        values = {self.value, self.value_ltr} - {None}
        return self.rhs in values or any(v in values for v in self.rhs_values)


def _num(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def _tokens(expr: str) -> list[str | Fraction] | None:
    out: list[str | Fraction] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c in "+-*/()":
            out.append(c)
            i += 1
        else:
            m = _NUM_RE.match(expr, i)
            if m is None:
                return None
            out.append(_num(m.group()))
            i = m.end()
    return out


def _eval(tokens: list, precedence: bool) -> Fraction | None:
    """Evaluate numbers, ``+ - * /`` and parentheses (unary minus allowed); None if malformed."""
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def atom():
        nonlocal pos
        t = peek()
        if t == "-":
            pos += 1
            v = atom()
            return None if v is None else -v
        if t == "(":
            pos += 1
            v = expr()
            if peek() != ")":
                raise ValueError
            pos += 1
            return v
        if isinstance(t, Fraction):
            pos += 1
            return t
        raise ValueError

    def apply(a, op, b):
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:
            raise ZeroDivisionError
        return a / b

    def term():
        nonlocal pos
        v = atom()
        while peek() in ("*", "/"):
            op = tokens[pos]
            pos += 1
            v = apply(v, op, atom())
        return v

    def expr():
        nonlocal pos
        v = term() if precedence else atom()
        while peek() in (("+", "-") if precedence else ("+", "-", "*", "/")):
            op = tokens[pos]
            pos += 1
            v = apply(v, op, term() if precedence else atom())
        return v

    try:
        v = expr()
    except (ValueError, ZeroDivisionError):
        return None
    return v if pos == len(tokens) else None


def _lhs_span(norm: str, eq: int) -> int:
    """Start of the arithmetic run that ends at the ``=`` at ``eq``."""
    i = eq
    while i > 0 and norm[i - 1] in _LHS_CHARS:
        # ". " and ", " end a sentence or a clause, not part of an expression.
        if norm[i - 1] in ".," and (i >= len(norm) or norm[i].isspace()):
            break
        i -= 1
    while i < eq and not (norm[i].isdigit() or norm[i] in "(-"):
        i += 1
    if i < eq and norm[i].isdigit() and i > 0 and (norm[i - 1].isalpha() or norm[i - 1] in "_\\"):
        while i < eq and norm[i].isdigit():  # "s1 = ...": the digit belongs to a word
            i += 1
    while i < eq and not (norm[i].isdigit() or norm[i] in "(-"):
        i += 1
    return i


def _rhs_span(norm: str, start: int) -> int:
    """End of the arithmetic run that starts at ``start`` (stops at ``=`` and at ". " / ", ")."""
    i = start
    while i < len(norm) and norm[i] in _LHS_CHARS:
        if norm[i] in ".," and (i + 1 >= len(norm) or norm[i + 1].isspace()):
            break
        i += 1
    while i > start and norm[i - 1] in " +-*/(.,":
        i -= 1
    return i


def _ended(tail: str) -> bool:
    """Whether the text after a right side shows that it is complete (prefix mode)."""
    tail = tail.lstrip(" \t")
    if not tail:
        return False
    c, nxt = tail[0], tail[1:2]
    if c in ".,":
        return nxt != "" and not nxt.isdigit()
    return not (c.isdigit() or c in "+-*/(")


def find_equations(text: str, *, prefix: bool = False) -> list[Equation]:
    r"""The equations of ``text`` in order (see the module docstring).

    >>> [(e.lhs, int(e.rhs), e.correct) for e in find_equations(r"12 + 5 = 17. 17 \times 3 = 50.")]
    [('12 + 5', 17, True), ('17 * 3', 50, False)]
    >>> [e.correct for e in find_equations("5 + 3 + 2 = 5 + 5 = 10, 12 + 5 = 17 - 3 = 14.")]
    [True, True, True, True]
    """
    norm, where = normalize(text)
    out = []
    for m in re.finditer(r"=", norm):
        eq = m.start()
        r = _RHS.match(norm, eq + 1)
        if r is None:
            continue
        end = _rhs_span(norm, r.start(2))
        if prefix and not _ended(norm[end:]):
            continue  # the result (or the expression it starts) may still grow
        start = _lhs_span(norm, eq)
        lhs = norm[start:eq].strip()
        toks = _tokens(lhs)
        if not toks or not any(t in ("+", "-", "*", "/") for t in toks[1:]):
            continue
        operands = tuple((_num(n.group()), where[n.start()]) for n in _NUM_RE.finditer(norm, start, eq))
        rhs = _num(r.group(2)) * (-1 if r.group(1) else 1)
        rhs_values: tuple[Fraction, ...] = ()
        rtoks = _tokens(norm[r.start(1) if r.group(1) else r.start(2):end])
        if rtoks and len(rtoks) > 1:
            rhs_values = tuple(v for v in (_eval(rtoks, True), _eval(rtoks, False)) if v is not None)
        out.append(Equation(lhs, rhs, where[r.start(1) if r.group(1) else r.start(2)], operands,
                            _eval(toks, True), _eval(toks, False), rhs_values))
    return out


@dataclass(frozen=True)
class ChainCheck:
    """The verdict on one response (character positions in the decoded text)."""

    failure_char: int
    """Index of the first character of the first wrong number, -1 if none."""
    doomed: bool
    """The final answer is not the gold answer (always False in prefix mode)."""
    checkable: bool
    """At least one equation, and a located error or a right answer."""
    equations: int
    reason: str
    """``ok``, ``arithmetic`` (a wrong result), ``operand`` (an unknown value used), ``answer``
    (right steps, wrong boxed number), ``no_equations``, ``unlocated`` (doomed, no error found)."""


def verify_chain(text: str, gold: int | str, numbers: Sequence[int], *, prefix: bool = False) -> ChainCheck:
    r"""Check the equations of a response to a chain problem whose question holds ``numbers``.

    >>> verify_chain("12 + 5 = 17. 17 * 3 = 51. The answer is \\boxed{51}.", 51, [12, 5, 3])
    ChainCheck(failure_char=-1, doomed=False, checkable=True, equations=2, reason='ok')
    >>> v = verify_chain("12 + 5 = 17. 17 * 3 = 41. The answer is \\boxed{41}.", 51, [12, 5, 3])
    >>> v.failure_char, v.doomed, v.reason
    (22, True, 'arithmetic')
    """
    known = {Fraction(int(n)) for n in numbers}
    eqs = find_equations(text, prefix=prefix)
    failure, reason = -1, "ok"
    for e in eqs:
        unknown = [p for v, p in e.operands if v not in known]
        if unknown:
            failure, reason = unknown[0], "operand"
            break
        if not e.correct:
            failure, reason = e.rhs_start, "arithmetic"
            break
        known.add(e.rhs)
        known.update(e.rhs_values)
    if prefix:
        return ChainCheck(failure, False, bool(eqs), len(eqs), reason if eqs else "no_equations")
    boxed = extract_boxed(text)
    value = None if boxed is None else parse_plain_integer(boxed)
    doomed = value is None or value != int(gold)
    if failure < 0 and doomed and value is not None:
        # right steps, wrong boxed number: the box's content is the wrong number
        failure, reason = _box_content_start(text), "answer"
    if not eqs:
        return ChainCheck(-1, doomed, False, 0, "no_equations")
    if failure < 0 and doomed:
        reason = "unlocated"
    return ChainCheck(failure, doomed, failure >= 0 or not doomed, len(eqs), reason)


def _box_content_start(text: str) -> int:
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    j = text.find("{", i) + 1
    while j < len(text) and not (text[j].isdigit() or text[j] in "-+"):
        j += 1
    return j


# ---------------------------------------------------------------------------------------------
# characters -> tokens


def char_offsets(tokenizer, tokens: Sequence[int]) -> list[int]:
    """``offsets[i]``: index in ``decode(tokens)`` where token ``i``'s text starts (decoding each prefix,
    so multi-byte characters split over tokens land on the token that completes them)."""
    return [len(tokenizer.decode(list(tokens[:i]), skip_special_tokens=True)) for i in range(len(tokens))]


def token_of_char(offsets: Sequence[int], char: int) -> int:
    """Index of the token holding character ``char`` (-1 for ``char < 0``)."""
    if char < 0:
        return -1
    return max(bisect.bisect_right(list(offsets), char) - 1, 0)
