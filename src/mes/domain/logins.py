"""Login names: the one form under which an operator is stored, looked up and throttled."""
from __future__ import annotations

import unicodedata

MAX_LENGTH = 64
# Control, format (zero-width and direction marks), private-use, surrogate and unassigned code points:
# invisible or ambiguous in a name that people type and read.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn"}


def normalize_login(raw: str) -> str:
    """The canonical spelling of a login: compatibility forms folded (NFKC), case folded, whitespace
    trimmed and runs of it made one space. Accounts are created, found and throttled under this one
    form, so no other spelling of a name can reach an account past the throttle of that account."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold())
    return " ".join(folded.split())


def login_problem(login: str) -> str | None:
    """Why a normalised login cannot name a new account, or None when it can."""
    if not login:
        return "a login is needed"
    if len(login) > MAX_LENGTH:
        return f"at most {MAX_LENGTH} characters"
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in login):
        return "letters, digits, punctuation and single spaces only"
    return None
