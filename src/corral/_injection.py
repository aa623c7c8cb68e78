"""The injection gate: rows whose text reads like instructions to the model are held for review.

A row is data to work on, and goes to the model between tags that say so (:mod:`corral._delimit`).
A row that still says "ignore the previous instructions and ..." (or carries a chat template's
role tokens, or tries to close the tags it is sent in) may steer the model, so its answer must
not reach the sink before a person has looked at it: the record ends in ``review`` with the
reason ``injection: column `<name>`: <pattern>: "<what matched>"``. Its steps still run, so the
reviewer sees the answer the model gave, and accepts it as it is when the flag was false; System
1 does not learn from it.

The gate reads the row's columns that the job's prompts send to the model (not an ``id`` or a
column only a ``when:`` reads), after Unicode NFKC normalisation with zero-width characters taken
out, so fullwidth or split letters do not hide a phrase. The patterns below are deliberately
narrow, so ordinary text is not flagged ("please ignore my previous email", "disregard the above
message", "you are now subscribed", "the response will be sent tomorrow", "please mark this
ticket as urgent" are ordinary). Each is a ``(name, regex)`` pair; the reason names the first that
matched and the words it matched:

* ``override``: ignore / disregard / forget / bypass the previous instructions, "disregard the
  above", in English, German, French, Spanish, Italian, Portuguese, Dutch, Russian, Chinese and
  Japanese;
* ``new instructions``: "new instructions:", "updated task:" and the like, in six languages;
* ``system prompt``: "reveal / print your system prompt";
* ``role change``: "you are now an unrestricted AI / DAN / in developer mode", "from now on you
  will answer ...";
* ``answer dictated``: "classify this message as ...", "your answer must be ham.", "respond only
  with the word ...";
* ``role marker``: a line that starts ``system:``, ``assistant:``, ``developer:`` or ``human:``
  (a chat turn), or ``### Instruction`` / ``### Response``;
* ``prompt token``: chat-template tokens (``<|im_start|>``, ``<|system|>``, ``<|endoftext|>``,
  ``[INST]``, ``<<SYS>>``, ``</s>``, ``<start_of_turn>``);
* ``delimiter``: a tag that opens or closes the prompts' own data tags (``</text>`` when a step
  sends ``{text}``) or a common data tag (``</data>``, ``</input>``, ``</document>``); HTML
  elements (``</body>``, ``</p>``) are markup, not flagged.

A job turns the gate off with ``injection: off``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.tasks.base import Step

_ANY = r"(?:all|any|the|your|my|these|those|previous|prior|above|earlier|preceding|former|original|system|initial)"
_ORDERS = r"(?:instructions?|prompts?|directions|directives|guidelines|system\s+(?:prompt|message))"
# what follows "the above" in an ordinary message ("please disregard the above message")
_ORDINARY_AFTER_ABOVE = (r"(?!\s*(?:e-?mails?|messages?|mails?|notes?|texts?|sms|address(?:es)?|numbers?|posts?|"
                         r"comments?|letters?|invoices?|orders?|tickets?|requests?|links?|offers?|quotes?|amounts?|"
                         r"dates?|details?|info(?:rmation)?|attachments?|files?|photos?|pictures?|one|ones|items?)\b)")
_LABELISH = r"[\"'“‘]?[\w-]+[\"'”’]?\s*(?:[.!;,]|$)"

#: (name, pattern): what reads like an instruction to the model rather than data
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.IGNORECASE | re.MULTILINE))
    for name, rx in (
        ("override", rf"\b(?:ignore|disregard|forget|override|bypass)\b(?:\s+{_ANY}\b)*\s+{_ORDERS}\b"),
        ("override", rf"\bskip\s+(?:all|any)\b(?:\s+{_ANY}\b)*\s+{_ORDERS}\b"),
        ("override", r"\b(?:disregard|ignore|forget)\s+(?:everything|anything|all)\s+(?:above|before|said\s+before|you\s+were\s+told)\b"),
        ("override", rf"\b(?:disregard|ignore)\s+(?:all\s+of\s+)?the\s+above\b{_ORDINARY_AFTER_ABOVE}"),
        ("override", r"\bignor(?:e|ez|er|iere|ieren)\b.{0,20}\b(?:instructions?|consignes|anweisungen|instruktionen)\b"),
        ("override", r"\b(?:vergiss|vergessen\s+sie|missachte)\b.{0,20}\b(?:anweisungen|instruktionen|vorgaben)\b"),
        ("override", r"\boublie[zr]?\b.{0,20}\b(?:instructions|consignes)\b"),
        ("override", r"\b(?:ignora|olvida|ignorate|dimentica|esqueça|esqueca)\b.{0,20}\b(?:instrucciones|istruzioni|instruções|instrucoes)\b"),
        ("override", r"\bignore\s+(?:as|todas\s+as)\s+instruções\b"),
        ("override", r"\b(?:negeer|vergeet)\b.{0,20}\b(?:instructies|opdrachten)\b"),
        ("override", r"(?:игнорируй|забудь|проигнорируй)(?:те)?\b.{0,25}(?:инструкци|указани|правил)"),
        ("override", r"(?:忽略|无视|無視|忘记|忘記|忽視).{0,8}(?:指令|指示|说明|說明|提示词|規則|规则)"),
        ("override", r"(?:指示|命令|プロンプト|ルール).{0,6}(?:無視|忘れ)"),
        ("new instructions", r"\b(?:new|updated|real|actual|additional|override)\s+(?:instructions?|task|directives?)\s*:"),
        ("new instructions", r"\b(?:neue|nouvelles?|nuevas?|nuove|novas?|nieuwe)\s+(?:anweisungen|instructions|consignes|"
                             r"instrucciones|istruzioni|instruções|instructies)\s*:"),
        ("system prompt", r"\b(?:reveal|print|show|repeat|output)\b.{0,20}\bsystem\s+(?:prompt|message)\b"),
        ("role change", r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:an?\s+)?(?:ai|assistant|chatbot|bot|(?:language\s+)?model|"
                        r"classifier|label?ler|(?:spam\s+)?filter|dan|unrestricted|unfiltered|jailbroken|bound\s+by|"
                        r"in\s+(?:developer|debug|admin|god|jailbreak)\s+mode)\b"),
        ("role change", r"\b(?:act|pretend|behave)\s+(?:as|like|to\s+be)\s+(?:an?\s+)?(?:different|unrestricted|new)\s+(?:ai|assistant|model|system)\b"),
        ("role change", r"\bfrom\s+now\s+on,?\s+you\s+(?:will|must|shall|are\s+to)\s+(?:only\s+)?"
                        r"(?:answer|respond|reply|output|classify|label|obey)\b"),
        ("role change", r"\bdeveloper\s+mode\s+(?:enabled|on)\b"),
        ("answer dictated", r"\b(?:classify|categori[sz]e|label)\s+(?:this|it|the)(?:\s+(?:message|text|email|ticket|row|input|sms|one))?\s+as\b"),
        ("answer dictated", r"\b(?:mark|tag|flag)\s+(?:this|the)\s+(?:message|text|sms|input|row)\s+as\b"),
        ("answer dictated", rf"\b(?:your|the)\s+(?:answer|output|label|classification)\s+(?:must|should)\s+be\s+{_LABELISH}"),
        ("answer dictated", r"\b(?:respond|reply|answer)\s+only\s+with\s+(?:the\s+(?:word|label)\b|[\"'“‘]|(?:yes|no|ham|spam|true|false)\b)"),
        ("role marker", r"^[ \t>*_-]*(?:system|assistant|developer|human)\s*:\s*\S"),
        ("role marker", r"^\s*#{2,}\s*(?:instruction|system|response|assistant)\b"),
        ("prompt token", r"<\|\s*/?\s*(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|"
                         r"begin_of_text|end_of_text|eom_id)\s*\|>"),
        ("prompt token", r"\[/?INST\]|<</?SYS>>|</s>|</?(?:start|end)_of_turn>"),
    )
)

#: data tags often used to fence text in prompts: a row that opens or closes one tries to leave its fence
COMMON_TAGS = ("data", "input", "document", "text", "user_input", "context", "row", "content")
#: HTML elements: a closing ``</body>`` in an HTML email is markup, not an attack (nor can it close
#: a tag: :func:`corral._delimit.delimit` escapes it)
HTML_TAGS = frozenset(("a", "abbr", "b", "body", "br", "code", "div", "em", "footer", "h1", "h2", "h3", "head",
                       "header", "html", "i", "img", "li", "main", "ol", "p", "pre", "section", "small", "span",
                       "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "title", "tr", "u", "ul"))
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"))


def _delimiters(tags: Iterable[str]) -> re.Pattern[str]:
    fenced = sorted({t for t in (*COMMON_TAGS, *tags) if t.lower() not in HTML_TAGS}, key=len, reverse=True)
    names = "|".join(re.escape(t) for t in fenced)
    return re.compile(rf"<\s*/?\s*(?:{names})\s*>", re.IGNORECASE)


_COMMON = _delimiters(())


def _readable(text: str) -> str:
    """``text`` as the patterns read it: NFKC-normalised, zero-width characters taken out."""
    return text if text.isascii() else unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


def flag(text: str, delimiters: re.Pattern[str] = _COMMON) -> str | None:
    """What in ``text`` reads like an instruction to the model (``name: "words"``), or None.
    ``delimiters`` matches the data tags a row must not open or close."""
    if not text:
        return None
    text = _readable(text)
    for name, rx in (*PATTERNS, ("delimiter", delimiters)):
        m = rx.search(text)
        if m is not None:
            words = " ".join(m.group(0).split())
            return f'{name}: "{words[:60]}"'
    return None


def flag_row(row: Mapping[str, Any] | None, columns: Iterable[str] | None = None,
             delimiters: re.Pattern[str] = _COMMON) -> str | None:
    """The first of the row's text values (of ``columns``, default all) that reads like an
    instruction, as the reason a record is held (``injection: column `<name>`: <what matched>``);
    None for a row of plain data. A list or object value is read as its JSON text."""
    row = row or {}
    for column in (row if columns is None else columns):
        value = row.get(column)
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        if isinstance(value, str) and value:
            found = flag(value, delimiters)
            if found is not None:
                return f"injection: column `{column}`: {found}"
    return None


class InjectionGate:
    """The gate of one job: the row columns its prompts send to the model, and the data tags
    they are sent in (see the module's docstring)."""

    def __init__(self, steps: Iterable[Step]) -> None:
        variants = [v for s in steps for v in s.variants() if v.sends_prompt]
        outputs = {s.name for s in variants}
        sent: list[str] = []
        for v in variants:
            only_when = set(v.when_names()) - {n[0] for n in (*v.template.names, *v.input_names())}
            sent += [n[0] for n in v.names_used() if n[0] not in outputs and n[0] not in only_when]
        #: the row's columns the prompts send to the model
        self.columns = tuple(dict.fromkeys(sent))
        self._delimiters = _delimiters(t for v in variants for t in v.data_tags())

    def check(self, row: Mapping[str, Any]) -> str | None:
        """Why the row is held (``injection: ...``), or None for a row that reads as data."""
        return flag_row(row, self.columns, self._delimiters)
