"""The one vocabulary (gate/vocabulary.py): timestamp format, the tag-length rule, typed words, and no
other module typing those words as literals."""

from __future__ import annotations

import ast
import calendar
import json
import re
import time
from pathlib import Path

import pandas as pd

from gate import vocabulary as words
from gate.vocabulary import LayerStatus, RuleStatus, Verdict, VersionStatus

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = [p for folder in ("gate", "mlflow_plugin") for p in sorted((ROOT / folder).rglob("*.py"))]
# The statuses and decision words. "none" (NO_STATUS) is too common a word to police, and so are the
# ledger's actions and outcomes ("override" and "rescan" also name endpoints and commands).
TYPED_WORDS = {str(member) for kind in (LayerStatus, RuleStatus, Verdict, VersionStatus) for member in kind}
# Elements of the JUnit XML format (junit.py writes <error> and <skipped>): JUnit's words, not ours.
FOREIGN_CALLS = {"SubElement", "Element"}


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

    assert set(words.STATUS_OF_DECISION) == set(Verdict)
    assert set(words.STATUS_OF_DECISION.values()) <= set(VersionStatus)
    assert all(key.startswith(words.TAG_PREFIX) for key in words.VERSION_TAGS) and len(words.VERSION_TAGS) == 4

    def outcome(status: RuleStatus, severity: Verdict) -> RuleOutcome:
        return RuleOutcome("r", severity, "model", "alpha", status, 1.0, {})

    decided = {decide([]), decide([outcome(RuleStatus.FAILED, Verdict.WARN)]),
               decide([outcome(RuleStatus.FAILED, Verdict.BLOCK)])}
    assert decided == set(Verdict)


def test_words_are_their_text_in_every_output():
    """A typed word compares equal to, prints as, and is written (JSON, CSV, f-strings) as its text."""
    assert LayerStatus.OK == "ok" and str(LayerStatus.OK) == "ok" and f"{VersionStatus.BLOCKED:>8}" == " blocked"
    assert json.dumps({"status": RuleStatus.INCONCLUSIVE}) == '{"status": "inconclusive"}'
    table = pd.DataFrame({"status": [LayerStatus.OK, LayerStatus.SKIPPED]})
    assert table.to_csv(index=False).split() == ["status", "ok", "skipped"]
    assert (table["status"] == "ok").tolist() == [True, False]


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _exempt_nodes(tree: ast.AST) -> set[int]:
    """Dict keys and subscripts (JSON field names such as {"ok": ...}), pieces of f-strings, and JUnit
    element names."""
    exempt = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            exempt.update(id(value) for value in node.values)
        elif isinstance(node, ast.Dict):
            exempt.update(id(key) for key in node.keys if key is not None)
        elif isinstance(node, ast.Subscript):
            exempt.add(id(node.slice))
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in FOREIGN_CALLS:
                exempt.update(id(arg) for arg in node.args)
    return exempt


def typed_word_literals(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text())
    exempt = _exempt_nodes(tree)
    return [f"{path.relative_to(root)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in TYPED_WORDS
            and id(node) not in exempt]


def test_no_module_but_the_vocabulary_types_its_words():
    found = [hit for path in PRODUCT if path.name != "vocabulary.py" for hit in typed_word_literals(path)]
    assert not found, "use gate.vocabulary's enums instead of these literals:\n" + "\n".join(found)
    templates = sorted((ROOT / "mlflow_plugin").rglob("*.html")) + sorted((ROOT / "gate").rglob("*.j2"))
    quoted = re.compile(r"""==\s*['"](%s)['"]""" % "|".join(sorted(TYPED_WORDS)))
    in_templates = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in templates
                    for match in quoted.finditer(path.read_text())]
    assert not in_templates, in_templates


def test_the_literal_finder_finds_literals(tmp_path):
    """The search above is not vacuous: it flags a status typed as a literal, and only that."""
    sample = tmp_path / "sample.py"
    sample.write_text('"""docstring: ok"""\nstatus = "blocked"\npayload = {"ok": 1}\nif row["status"] == "skipped":\n'
                      '    pass\n')
    found = [hit.split(": ", 1)[1] for hit in typed_word_literals(sample, tmp_path)]
    assert found == ["'blocked'", "'skipped'"]

