"""What an action's record holds: plain, strict JSON."""

import json
import math

from policies.control.actions import plain


def test_a_record_holds_plain_json_figures():
    record = plain({"weights": (1 - 0.8, 0.8), "p95": math.nan, "cap": math.inf, "n": 3})
    assert record == {"weights": [0.2, 0.8], "p95": None, "cap": None, "n": 3}
    json.dumps(record, allow_nan=False)  # strict JSON
