"""Test utilities: the masked reference runner every eviction policy is judged against."""

from avl_lab.testing.reference import ReferenceOutput, masked_reference, run_policy

__all__ = ["ReferenceOutput", "masked_reference", "run_policy"]
