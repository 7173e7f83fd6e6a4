"""The seen-items rule: what evaluation does with the items a user already interacted with.

`keep` ranks them like any other item (`--keep-seen`). Otherwise they are excluded from the
ranking, and `--seen-targets` says what happens when the target itself is one of them:

- `miss` (the default; the rule of the study's code, S3Rec's and SASRec+'s `filter_seen`): an
  item the user has seen is never recommended, so such a target cannot be hit; it gets
  `NOT_FOUND_RANK` and adds 0 to every metric.
- `rank`: the target keeps its score while the other seen items are masked, so it competes
  with unseen items only. This rewards a model for repeating the user's history.
"""

from __future__ import annotations

from typing import Literal

SeenTargets = Literal["miss", "rank"]
SeenRule = Literal["miss", "rank", "keep"]

# One sentence per rule, for table footnotes and notices.
SEEN_RULE_NOTES: dict[str, str] = {
    "miss": "Items the user already has are excluded from the ranking, and a target among "
    "them counts as not found (--seen-targets miss).",
    "rank": "Items the user already has are excluded from the ranking except the target, "
    "which is still ranked (--seen-targets rank: rewards repeating the history).",
    "keep": "Items the user already has are ranked like any other (--keep-seen).",
}

# What the rule does to such a target, for one-line notices.
SEEN_RULE_EFFECTS: dict[str, str] = {
    "miss": "--seen-targets miss counts them as not found",
    "rank": "--seen-targets rank still ranks them (rewards repeating the history)",
    "keep": "--keep-seen ranks every item",
}


def seen_rule(exclude_seen: bool, seen_targets: SeenTargets) -> SeenRule:
    """The rule in force: `keep` when seen items are not excluded, else the target rule."""
    return seen_targets if exclude_seen else "keep"
