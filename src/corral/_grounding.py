"""Whether an answer's value occurs in the text it was taken from (grounded fields).

One function does the work::

    find(value, text, kind="text") -> (start, end) | None

It returns the character span of ``text`` where ``value`` occurs, or ``None`` when it does not.
``kind`` says how values compare:

``"text"``
    Case, whitespace and punctuation do not count: both sides are reduced to their letters and
    digits (case-folded, accents dropped) and the value must match whole words: ``ORD-12345``
    occurs in ``order ord 12345 shipped``, ``12`` does not occur in ``1234``. A text value that
    does not occur as text is tried as a number (``$1,349.00`` occurs in ``total 1349 EUR``) and
    as a date (``March 1, 2024`` occurs in ``due 2024-03-01``).
``"number"``
    Numbers compare as numbers across formats: ``1349`` occurs in ``$1,349.00``, ``1.349,00``,
    ``1 349`` and ``1349``; ``12`` does not occur in ``1234`` or ``12.5``. A negative value needs
    its minus sign in the text.
``"date"``
    The value is a date (``2024-03-01``, or any of the formats below); it occurs where the text
    names the same day as ``2024-03-01``, ``2024/03/01``, ``03/01/2024`` or ``01/03/2024``
    (month and day both tried), ``01.03.24``, ``1 March 2024``, ``1st Mar 2024``, ``01-Mar-2024``,
    ``March 1, 2024`` or ``Mar 1st 2024``. English month names only; a date without a year does
    not count.

``None`` (and an empty value) never occurs; callers treat null as grounded before asking.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Literal

Kind = Literal["text", "number", "date"]
Span = tuple[int, int]

__all__ = ["Kind", "Span", "find", "parse_date", "parse_number"]


def find(value: Any, text: str, kind: Kind = "text") -> Span | None:
    """The ``(start, end)`` span of ``text`` where ``value`` occurs, compared as ``kind``; or
    ``None`` when it does not occur (see the module docstring for what counts)."""
    if value is None or isinstance(value, bool) or not text:
        return None
    if kind == "number" or (isinstance(value, (int, float, Decimal)) and kind != "date"):
        nums = _value_numbers(value)
        return _find_number(nums, text) if nums else None
    if kind == "date":
        day = value if isinstance(value, _dt.date) else parse_date(str(value))
        return _find_date(day, text) if day is not None else None
    s = str(value)
    span = _find_text(s, text)
    if span is not None:
        return span
    nums = parse_number(s)
    if nums:
        span = _find_number(nums, text)
        if span is not None:
            return span
    day = parse_date(s)
    return _find_date(day, text) if day is not None else None


# --- text -------------------------------------------------------------------------------------


def _fold(c: str) -> str:
    """One character as the letters and digits it compares as ('' for punctuation and space)."""
    if c.isascii():
        return c.lower() if c.isalnum() else ""
    out = []
    for d in unicodedata.normalize("NFKD", c.casefold()):
        if d.isalnum():
            out.append(d)
    return "".join(out)


@lru_cache(maxsize=64)
def _index(text: str) -> tuple[str, tuple[int, ...], frozenset[int], frozenset[int]]:
    """``text`` reduced to its folded letters and digits, the original index of each reduced
    character, and the reduced positions where a word starts and where one ends."""
    chars: list[str] = []
    where: list[int] = []
    starts: set[int] = set()
    ends: set[int] = set()
    in_word = False
    for i, c in enumerate(text):
        f = _fold(c)
        if not f:
            if in_word:
                ends.add(len(chars))
            in_word = False
            continue
        if not in_word:
            starts.add(len(chars))
        in_word = True
        for d in f:
            chars.append(d)
            where.append(i)
    if in_word:
        ends.add(len(chars))
    return "".join(chars), tuple(where), frozenset(starts), frozenset(ends)


def _find_text(value: str, text: str) -> Span | None:
    needle = "".join(_fold(c) for c in value)
    if not needle:
        return None
    hay, where, starts, ends = _index(text)
    i = hay.find(needle)
    while i >= 0:
        j = i + len(needle)
        if i in starts and j in ends:
            return where[i], where[j - 1] + 1
        i = hay.find(needle, i + 1)
    return None


# --- numbers ----------------------------------------------------------------------------------

# digit groups joined by single separators: 1,349.00  1.349,00  1 349  1'349  12
_NUMBER_RUN = re.compile(r"(?<![\w.,])([-\u2212]?)(\d+(?:[.,'\u00a0\u202f ]\d+)*)(?![\w]|[.,]\d)")
_GROUPING = ",. '\u00a0\u202f"
_CODES = "USD|EUR|GBP|JPY|CHF|CAD|AUD|NZD|INR|CNY|SEK|NOK|DKK|PLN|CZK|BRL|MXN|ZAR"
_WRITTEN_NUMBER = re.compile(
    rf"\s*(?:(?:{_CODES})\s*)?([-\u2212+]?)\s*[$€£¥₹]?\s*([-\u2212+]?)"
    rf"(\d+(?:[.,'\u00a0\u202f ]\d+)*)\s*(?:[$€£¥₹%]|(?:{_CODES}))?\s*"
)


def _grouped(groups: list[str], seps: list[str]) -> str | None:
    """The digits of ``groups`` read as one integer with thousands separators, or None."""
    if not seps:
        return groups[0]
    if len(set(seps)) != 1 or seps[0] not in _GROUPING:
        return None
    if not 1 <= len(groups[0]) <= 3 or any(len(g) != 3 for g in groups[1:]):
        return None
    return "".join(groups)


def _readings(groups: list[str], seps: list[str]) -> set[Decimal]:
    """Every number a run of digit groups can be read as (thousands grouping, decimal mark)."""
    out: set[Decimal] = set()
    whole = _grouped(groups, seps)
    if whole is not None:
        out.add(Decimal(whole))
    if seps and seps[-1] in ".,":
        head = _grouped(groups[:-1], seps[:-1])
        if head is not None and seps[-1] not in seps[:-1]:
            out.add(Decimal(f"{head}.{groups[-1]}"))
    return out


def _split(run: str) -> tuple[list[str], list[str], list[int]]:
    groups: list[str] = []
    seps: list[str] = []
    offsets: list[int] = []
    for m in re.finditer(r"\d+", run):
        if groups:
            seps.append(run[offsets[-1] + len(groups[-1]) : m.start()])
        groups.append(m.group())
        offsets.append(m.start())
    return groups, seps, offsets


@lru_cache(maxsize=64)
def _candidates(text: str) -> tuple[tuple[Decimal, bool, Span], ...]:
    """Numbers written in ``text``: (value, negative, span), for every way of reading each run
    (a run that is no number as a whole also gives its groups one by one)."""
    out: list[tuple[Decimal, bool, Span]] = []
    for m in _NUMBER_RUN.finditer(text):
        neg = bool(m.group(1))
        run, base = m.group(2), m.start(2)
        groups, seps, offs = _split(run)
        pieces: list[tuple[int, int]] = []  # (first group, last group) ranges to read
        whole = _readings(groups, seps)
        for v in whole:
            out.append((v, neg, (m.start(), m.end())))
        # spaces also separate numbers ("rooms 1 349"); a run that is no number as a whole
        # is read group by group and pair by pair
        cut = [i for i, s in enumerate(seps) if s not in ".,"] if whole else list(range(len(seps)))
        lo = 0
        for i in [*cut, len(groups) - 1]:
            if (lo, i) != (0, len(groups) - 1):
                pieces.append((lo, i))
            lo = i + 1
        if not whole:
            pieces += [(i, i + 1) for i in range(len(groups) - 1) if seps[i] in ".,"]
        for a, b in pieces:
            start, end = base + offs[a], base + offs[b] + len(groups[b])
            for v in _readings(groups[a : b + 1], seps[a:b]):
                out.append((v, neg and a == 0, (start if a else m.start(), end)))
    return tuple(out)


def parse_number(s: str) -> set[Decimal]:
    """The numbers a written value may mean (``$1,349.00`` -> {1349.00}; ``1,349`` -> {1349,
    1.349}); empty when it is not a number."""
    m = _WRITTEN_NUMBER.fullmatch(s)
    if not m:
        return set()
    groups, seps, _ = _split(m.group(3))
    sign = -1 if (m.group(1) + m.group(2)) in ("-", "\u2212") else 1
    return {sign * v for v in _readings(groups, seps)}


def _value_numbers(value: Any) -> set[Decimal]:
    if isinstance(value, str):
        return parse_number(value)
    try:
        return {Decimal(str(value))}
    except InvalidOperation:
        return set()


def _find_number(values: set[Decimal], text: str) -> Span | None:
    for got, neg, span in _candidates(text):
        for v in values:
            if got == abs(v) and (v >= 0 or neg):
                return span
    return None


# --- dates ------------------------------------------------------------------------------------

_MONTHS = {
    name: i + 1
    for i, names in enumerate([
        ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"),
        ("may",), ("june", "jun"), ("july", "jul"), ("august", "aug"),
        ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"), ("december", "dec"),
    ])
    for name in names
}
_MON = r"(?P<mon>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>\d{4}|\d{2})"
_DATES = [
    re.compile(r"(?<!\d)(?P<year>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})(?!\d)"),
    re.compile(r"(?<!\d)(?P<a>\d{1,2})[-/.](?P<b>\d{1,2})[-/.]" + _YEAR + r"(?![\d])"),
    re.compile(r"(?<![\w])" + _DAY + r"(?:\s+of)?[\s\-]+" + _MON + r",?[\s\-]+" + _YEAR + r"(?!\d)", re.I),
    re.compile(r"(?<![\w])" + _MON + r"\s+" + _DAY + r",?\s+" + _YEAR + r"(?!\d)", re.I),
]


def _year(y: str) -> int:
    n = int(y)
    if len(y) == 2:
        n += 2000 if n < 70 else 1900
    return n


def _day(y: int, m: int, d: int) -> _dt.date | None:
    try:
        return _dt.date(y, m, d)
    except ValueError:
        return None


@lru_cache(maxsize=64)
def _dates(text: str) -> tuple[tuple[_dt.date, Span], ...]:
    out: list[tuple[_dt.date, Span]] = []
    for i, rx in enumerate(_DATES):
        for m in rx.finditer(text):
            g = m.groupdict()
            days: list[_dt.date | None]
            if i == 0:
                days = [_day(int(g["year"]), int(g["m"]), int(g["d"]))]
            elif i == 1:
                y = _year(g["year"])
                a, b = int(g["a"]), int(g["b"])
                days = [_day(y, a, b), _day(y, b, a)]  # month first (US) and day first
            else:
                days = [_day(_year(g["year"]), _MONTHS[g["mon"].lower()], int(g["day"]))]
            for d in days:
                if d is not None:
                    out.append((d, m.span()))
    return tuple(out)


def parse_date(s: str) -> _dt.date | None:
    """The day a written date names, if it names exactly one (``2024-03-01``, ``1 March
    2024``, ``Mar 1, 2024``; ``03/01/2024`` only when month and day cannot be swapped)."""
    s = s.strip()
    found = {d for d, span in _dates(s) if span == (0, len(s))}
    return found.pop() if len(found) == 1 else None


def _find_date(day: _dt.date, text: str) -> Span | None:
    for d, span in _dates(text):
        if d == day:
            return span
    return None
