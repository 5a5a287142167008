"""The one vocabulary of gate.* tags: timestamp format, the tag-length rule, statuses of decisions."""

from __future__ import annotations

import calendar
import time

from gate import vocabulary as words


def test_timestamps_share_one_utc_format():
    epoch = calendar.timegm((2026, 12, 2, 3, 4, 5, 0, 0, 0))
    assert words.utc_timestamp(epoch) == "2026-12-02T03:04:05Z"
    # a decision's ISO time with any offset lands on the same instant, in the same format
    assert words.as_tag_timestamp("2026-12-02T04:04:05+01:00") == "2026-12-02T03:04:05Z"
    assert time.strptime(words.utc_timestamp(), words.TIMESTAMP_FORMAT)


def test_long_tag_values_are_cut_visibly():
    assert words.fit_tag_value("short") == "short"
    exact = "x" * words.MAX_TAG_VALUE
    assert words.fit_tag_value(exact) == exact
    cut = words.fit_tag_value("y" * 12345)
    assert len(cut) == words.MAX_TAG_VALUE
    assert cut.startswith("y" * 4000) and "12345 characters" in cut and "truncated" in cut


def test_every_decision_word_has_a_status():
    from gate.policy.decision import decide
    from gate.policy.evaluate import RuleOutcome

    assert set(words.STATUS_OF_DECISION.values()) <= set(words.STATUSES)
    assert all(key.startswith(words.TAG_PREFIX) for key in (words.STATUS, words.REASON, words.BASELINE_NOTE,
                                                             words.VIOLATION, words.OVERRIDE_BY))

    def outcome(status: str, severity: str) -> RuleOutcome:
        return RuleOutcome("r", severity, "model", "alpha", status, 1.0, {})

    decided = {decide([]), decide([outcome("failed", "warn")]), decide([outcome("failed", "block")])}
    assert decided == set(words.STATUS_OF_DECISION)
