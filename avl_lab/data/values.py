"""Random field values for the synthetic tasks: short upper-case values that fit the
16-column character grid (at most 10 characters: ``12/03/21``, ``$1,234.50``,
``M JOHNSON``, ``REF-KXM42``) and the word list of the scene-text task. Codes avoid the
letters I, O and Q, which are easily confused with digits.
"""

from __future__ import annotations

import random

__all__ = [
    "CITIES",
    "FIRST_NAMES",
    "LAST_NAMES",
    "WORDS",
    "short_account",
    "short_amount",
    "short_city",
    "short_code",
    "short_date",
    "short_person",
    "short_phone",
    "zip_code",
]

_FIRST = (
    "James Mary John Linda Robert Maria David Susan Daniel Karen Peter Laura Thomas Emma Carlos "
    "Sofia Ahmed Yuki Olga Kevin Nina Omar Grace Victor Helen Lucas Alice Ivan Chloe Samuel"
)
_LAST = (
    "Smith Johnson Brown Garcia Miller Davis Wilson Moore Taylor Clark Lewis Walker Young King "
    "Wright Lopez Hill Green Baker Turner Parker Evans Collins Morgan Reed Cooper Ward Price "
    "Bennett Hughes"
)
_CITIES = (
    "Springfield,IL Riverside,CA Fairview,TX Greenville,SC Madison,WI Georgetown,KY Clinton,IA "
    "Salem,OR Franklin,TN Oakland,CA Portland,ME Denver,CO Austin,TX Boston,MA Dallas,TX "
    "Seattle,WA Chicago,IL Phoenix,AZ Atlanta,GA Houston,TX"
)
_WORDS = (
    "park river north south east west garden coffee market station bakery library museum "
    "harbor bridge castle forest valley island meadow sunset orange silver golden quiet happy "
    "rapid gentle bright stone maple cedar ocean desert canyon summit winter summer spring "
    "autumn morning evening window rocket planet shadow thunder crystal velvet copper marble "
    "lemon cherry pepper tiger falcon dolphin rabbit turtle panda eagle wolf bear fox owl "
    "street avenue road lane plaza square center hotel cinema school studio gallery diner "
    "pizza bread candy fresh open closed sale exit enter stop slow danger welcome parking "
    "public private office police hospital pharmacy garage airport"
)
FIRST_NAMES = tuple(_FIRST.split())
LAST_NAMES = tuple(_LAST.split())
CITIES = tuple(c.replace(",", ", ") for c in _CITIES.split())
WORDS = tuple(_WORDS.split())
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def zip_code(rng: random.Random) -> str:
    """``"90210"``."""
    return f"{rng.randint(10000, 99999)}"


def short_date(rng: random.Random) -> str:
    """``"12/03/21"``."""
    return f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(0, 29):02d}"


def short_amount(rng: random.Random, high: int = 999_999) -> str:
    """``"$1,234.50"`` (between $1 and $9,999.99 by default)."""
    return f"${rng.randint(100, high) / 100:,.2f}"


def short_person(rng: random.Random) -> str:
    """``"M JOHNSON"``: an initial and a last name."""
    return f"{rng.choice(FIRST_NAMES)[0]} {rng.choice(LAST_NAMES).upper()}"


def short_phone(rng: random.Random) -> str:
    """``"555-2849"``."""
    return f"555-{rng.randint(1000, 9999)}"


def short_account(rng: random.Random) -> str:
    """``"4821-7730"``."""
    return f"{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"


def short_city(rng: random.Random) -> str:
    """``"BOSTON MA"`` (upper case, at most 10 characters)."""
    return rng.choice([c.replace(",", "").upper() for c in CITIES if len(c) <= 11])


def short_code(rng: random.Random, prefix: str = "REF") -> str:
    """``"REF-KXM42"``."""
    return f"{prefix}-{''.join(rng.choice(_LETTERS) for _ in range(3))}{rng.randint(10, 99)}"
