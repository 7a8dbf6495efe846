"""Whether a series was acquired after contrast, from its header: Contrast/Bolus Agent
(0018,0010) when the scanner fills it, else the words technologists and protocols use, a
pre-contrast word vetoing. (Acquisition order is companions.py's fallback.)"""

from __future__ import annotations

import itertools
import re

from marrownode.dixon.roles import Frame

#: Words that mean "after contrast" in series descriptions and protocol names (upper case;
#: German and Dutch scanners write KM / Gd, French "injecté"; agent brand names too).
CONTRAST_WORDS = frozenset({
    "+C", "C+", "+GD", "GD+", "GD", "GAD", "GADO", "+KM", "KM+", "KM", "MIT KM", "POST",
    "POSTCONTRAST", "POST-CONTRAST", "POSTGD", "POST-GD", "CONTRAST", "CE", "KONTRAST",
    "INJ", "INJECTE", "GADOVIST", "DOTAREM", "MULTIHANCE", "PROHANCE", "CLARISCAN",
    "MAGNEVIST", "OMNISCAN", "ELUCIREM", "VUEWAY"})
#: "+C" and its kin written onto another word (T1+C, T1FS+GD, KM+).
_GLUED_CONTRAST = re.compile(r"(\+C|\+GD|\+KM|KM\+|GD\+)$")
#: Words that mean "before contrast": they veto the words above ("pre-contrast").
PRE_CONTRAST_WORDS = frozenset({"PRE", "PRECONTRAST", "PRE-CONTRAST", "NATIV", "NATIVE",
                                "OHNE KM", "-C", "NONCONTRAST", "NON-CONTRAST", "PREGD"})
def words(text: str) -> set[str]:
    """Upper-case words of a description, keeping + and - attached (+C, KM+, -C) and the
    two-word forms (MIT KM, OHNE KM)."""
    tokens = [t for t in re.split(r"[\s_/(),]+", text.upper()) if t]
    return set(tokens) | {" ".join(pair) for pair in itertools.pairwise(tokens)}


def contrast_words(frame: Frame) -> tuple[bool | None, str]:
    """(True, evidence) for after contrast, (False, evidence) for a stated pre-contrast
    series, (None, '') when neither header nor words say."""
    if frame.contrast_agent:
        return True, f"Contrast/Bolus Agent '{frame.contrast_agent}'"
    said = words(f"{frame.series_description} {frame.protocol_name}")
    if pre := sorted(said & PRE_CONTRAST_WORDS):
        return False, f"description says {pre[0]}"
    if post := sorted(said & CONTRAST_WORDS):
        return True, f"description says {post[0]}"
    if glued := sorted(w for w in said if _GLUED_CONTRAST.search(w)):
        return True, f"description says {glued[0]}"
    return None, ""


def after_contrast(frame: Frame) -> bool:
    """Whether the header or the words say this image was acquired after contrast."""
    return bool(contrast_words(frame)[0])
