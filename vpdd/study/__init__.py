"""The pre-training study: does actionless video help when action labels are scarce (docs/study.md)."""
