"""Secret redaction for anything that is stored or logged (audit args, log lines)."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|apikey|credential|private[_-]?key|authorization|^auth$|"
    r"signature|cookie|session[_-]?id|client[_-]?secret)",
    re.IGNORECASE,
)
# values that are secrets whatever key they sit under
_SECRET_VALUE = re.compile(
    r"(xox[abposr]-[A-Za-z0-9-]{6,}|xapp-[A-Za-z0-9-]{6,}|"
    r"hvs\.[A-Za-z0-9_-]{10,}|(?<![\w.])s\.[A-Za-z0-9]{24}\b|"
    r"AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|"
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)"
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@\s/]+)@")
_INLINE_ASSIGN = re.compile(
    r"(?P<key>\b[\w.-]*(password|secret|token|api[_-]?key)[\w.-]*)(?P<sep>\s*[=:]\s*)(?P<val>[^\s,;&]+)",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    text = _SECRET_VALUE.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    return _INLINE_ASSIGN.sub(lambda m: f"{m['key']}{m['sep']}{REDACTED}", text)


def redact(value: Any, *, key: str | None = None) -> Any:
    """Return a copy of `value` with secrets replaced by `***` (keys by name, values by shape)."""
    if key is not None and _SECRET_KEY.search(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, dict):
        return {str(k): redact(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
