"""Tests of the shared plumbing (a package, so module names never clash with services' tests)."""
