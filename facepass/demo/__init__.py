"""Demo and test fixtures built from real face photos that ship inside packages."""
