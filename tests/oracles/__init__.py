"""Test oracles: upstream code used the plain way, which our faster code is checked and timed
against (tests, benchmarks). Not part of the installed packages."""
